//! Contacts named by a list or a filter, read from the contacts service page by page.

use contactier_proto::contacts::v1::{self as cpb, contacts_service_client::ContactsServiceClient};
use contactier_runtime::auth::name_account;
use contactier_runtime::host::PeerChannel;
use tonic::Status;

/// Where a status request's contacts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    List(String),
    Filter(cpb::ContactFilter),
}

/// The contacts service as seen from here.
#[derive(Clone)]
pub struct Contacts {
    pub peer: PeerChannel,
}

impl Contacts {
    fn request<T>(&self, account: &str, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        name_account(req.metadata_mut(), account);
        req
    }

    /// Whether the target can be read: the list exists in the account, or the filter is one
    /// the contacts service accepts. NOT_FOUND or INVALID_ARGUMENT (naming `field`) when not.
    pub async fn check(&self, account: &str, target: &Target, field: &str) -> Result<(), Status> {
        let mut client = ContactsServiceClient::new(self.peer.service());
        let answer = match target {
            Target::List(id) => {
                let req = cpb::GetListRequest { id: id.clone() };
                client.get_list(self.request(account, req)).await.map(drop)
            }
            Target::Filter(f) => {
                let req = cpb::SearchContactsRequest {
                    filter: Some(f.clone()),
                    page_size: 1,
                    ..Default::default()
                };
                client.search_contacts(self.request(account, req)).await.map(drop)
            }
        };
        answer.map_err(|e| match e.code() {
            tonic::Code::NotFound => Status::not_found(format!("{field}: {}", e.message())),
            tonic::Code::InvalidArgument => Status::invalid_argument(format!("{field}.{}", e.message())),
            _ => from_contacts(e),
        })
    }

    /// Every contact id of the target. NOT_FOUND for an unknown list; INVALID_ARGUMENT (with
    /// the contacts service's field) for a bad filter.
    pub async fn ids(&self, account: &str, target: &Target) -> Result<Vec<String>, Status> {
        let mut client = ContactsServiceClient::new(self.peer.service());
        let mut ids = Vec::new();
        let mut token = String::new();
        loop {
            let next = match target {
                Target::List(id) => {
                    let req = cpb::ListListMembersRequest {
                        list_id: id.clone(),
                        page_size: 1_000,
                        page_token: token,
                    };
                    let r =
                        client.list_list_members(self.request(account, req)).await.map_err(from_contacts)?;
                    let r = r.into_inner();
                    ids.extend(r.contact_ids);
                    r.next_page_token
                }
                Target::Filter(f) => {
                    let req = cpb::SearchContactsRequest {
                        filter: Some(f.clone()),
                        sorts: vec![cpb::Sort { property: "id".into(), direction: 0 }],
                        page_size: 1_000,
                        page_token: token,
                        properties: vec!["email".into()],
                    };
                    let r = client.search_contacts(self.request(account, req)).await.map_err(|e| {
                        // Field names in the answer refer to this request's filter.
                        if e.code() == tonic::Code::InvalidArgument {
                            Status::invalid_argument(e.message().to_owned())
                        } else {
                            from_contacts(e)
                        }
                    })?;
                    let r = r.into_inner();
                    ids.extend(r.contacts.into_iter().map(|c| c.id));
                    r.next_page_token
                }
            };
            if next.is_empty() {
                return Ok(ids);
            }
            token = next;
        }
    }
}

/// A failure of the contacts service says so: the caller should know which dependency to wait
/// for (the code, and with it RetryInfo, stays).
fn from_contacts(e: Status) -> Status {
    match e.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            Status::new(e.code(), format!("the contacts service could not answer: {}", e.message()))
        }
        _ => e,
    }
}
