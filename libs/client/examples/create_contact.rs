//! The README's example: `cargo run -p contactier-client --example create_contact` against a
//! running `contactier` (the token file holds the banner's development token).

use contactier_client::pb::contacts::v1::{ContactInput, CreateContactRequest};
use contactier_client::{Client, Endpoints, Error, TokenFile};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let token_file = std::env::args().nth(1).unwrap_or_else(|| "/var/run/secrets/contactier/token".into());
    let client = Client::builder(Endpoints::local("127.0.0.1", 50051)) // or one URL per service
        .token(TokenFile::new(token_file))
        .build()?;
    let request = CreateContactRequest {
        contact: Some(ContactInput { email: "ada@example.com".into(), ..Default::default() }),
        request_id: "signup-4711".into(), // makes the call safe to send again
    };
    match client.contacts().create_contact(request).await.map_err(Error::from) {
        Ok(r) => println!("created {}", r.into_inner().contact.unwrap_or_default().id),
        Err(e) if e.reason() == Some("ALREADY_EXISTS") => println!("exists: {:?}", e.resource()),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
