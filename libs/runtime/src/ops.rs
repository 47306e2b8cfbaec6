//! The ops ClockService over the injected clock.

use crate::clock::{Clock, ClockError};
use crate::convert::timestamp;
use chrono::{DateTime, Utc};
use contactier_proto::ops::v1::{self as pb, clock_service_server::ClockService};
use tonic::{Request, Response, Status};

pub struct ClockOps {
    clock: Clock,
}

impl ClockOps {
    pub fn new(clock: Clock) -> Self {
        Self { clock }
    }

    pub fn server(clock: Clock) -> pb::clock_service_server::ClockServiceServer<Self> {
        pb::clock_service_server::ClockServiceServer::new(Self::new(clock))
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp, field: &str) -> Result<DateTime<Utc>, Status> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| Status::invalid_argument(format!("{field}: not a valid timestamp")))
}

fn clock_status(e: ClockError) -> Status {
    match e {
        ClockError::NotManual => Status::failed_precondition(e.to_string()),
        ClockError::Backwards { .. } => Status::invalid_argument(format!("time: {e}")),
    }
}

#[tonic::async_trait]
impl ClockService for ClockOps {
    async fn get_time(
        &self,
        _: Request<pb::GetTimeRequest>,
    ) -> Result<Response<pb::GetTimeResponse>, Status> {
        Ok(Response::new(pb::GetTimeResponse {
            now: Some(timestamp(self.clock.now())),
            manual: self.clock.is_manual(),
        }))
    }

    async fn set_time(
        &self,
        req: Request<pb::SetTimeRequest>,
    ) -> Result<Response<pb::SetTimeResponse>, Status> {
        let t = req.into_inner().time.ok_or_else(|| Status::invalid_argument("time: required"))?;
        let target = from_timestamp(&t, "time")?;
        self.clock.advance_to(target).await.map_err(clock_status)?;
        Ok(Response::new(pb::SetTimeResponse { now: Some(timestamp(self.clock.now())) }))
    }

    async fn advance_time(
        &self,
        req: Request<pb::AdvanceTimeRequest>,
    ) -> Result<Response<pb::AdvanceTimeResponse>, Status> {
        let by = req.into_inner().by.ok_or_else(|| Status::invalid_argument("by: required"))?;
        if by.seconds < 0 || by.nanos < 0 {
            return Err(Status::invalid_argument("by: must not be negative"));
        }
        let by = chrono::Duration::seconds(by.seconds) + chrono::Duration::nanoseconds(by.nanos.into());
        let steps = self.clock.advance(by).await.map_err(clock_status)?;
        Ok(Response::new(pb::AdvanceTimeResponse {
            now: Some(timestamp(self.clock.now())),
            steps: steps as i64,
        }))
    }
}
