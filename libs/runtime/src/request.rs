//! What every handler takes from its request, in one line: the account it acts on.

use crate::auth::Principal;
use tonic::{Request, Response, Status};

/// What a unary handler answers.
pub type Answer<T> = Result<Response<T>, Status>;

/// The account the caller acts on: a user token's own, or the one a service token names in
/// `x-account-id`.
pub fn account<T>(req: &Request<T>) -> Result<String, Status> {
    Ok(Principal::of(req)?.account_id()?.to_owned())
}
