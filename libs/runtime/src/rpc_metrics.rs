//! Each RPC path's labels and metric handles, made once. A call built its four metrics' labels
//! from owned strings, and the recorder hashed and looked each up in its registry, on every
//! call: allocations and lookups on the hottest path of every service.

use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::OnceLock;

/// One RPC path of the contracts, or every path they do not declare (`unknown`: paths anyone
/// can send must not make new series).
pub struct Rpc {
    /// `/service/method`.
    pub path: &'static str,
    pub service: String,
    pub method: String,
    /// go-grpc-prometheus' `grpc_type`: whether the method streams.
    pub kind: &'static str,
    metrics: OnceLock<Metrics>,
}

/// Codes 0-16, and a call that ended in a transport failure (no code).
const CODES: usize = 18;

/// The handles of one path's metrics, made with the recorder once it is installed.
pub struct Metrics {
    pub started: Counter,
    pub in_flight: Gauge,
    pub handling: Histogram,
    handled: [OnceLock<Counter>; CODES],
}

impl Rpc {
    fn new(path: &'static str, kind: &'static str) -> Self {
        let (service, method) = crate::prom::split_path(path);
        Self { path, service, method, kind, metrics: OnceLock::new() }
    }

    /// `service/method`, the span's name.
    pub fn name(&self) -> &str {
        &self.path[1..]
    }

    /// The path's metric handles; none before the process's recorder is installed (a handle
    /// made then would count nowhere for good).
    pub fn metrics(&self) -> Option<&Metrics> {
        if !crate::prom::installed() {
            return None;
        }
        Some(self.metrics.get_or_init(|| {
            let (service, method, kind) = (self.service.clone(), self.method.clone(), self.kind);
            Metrics {
                started: metrics::counter!("grpc_server_started_total", "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_type" => kind),
                in_flight: metrics::gauge!("grpc_server_in_flight_requests", "grpc_service" => service.clone()),
                handling: metrics::histogram!("grpc_server_handling_seconds", "grpc_service" => service, "grpc_method" => method, "grpc_type" => kind),
                handled: Default::default(),
            }
        }))
    }

    /// The count of calls of this path that ended with `code` (none: a transport failure).
    pub fn handled<'a>(&self, metrics: &'a Metrics, code: Option<tonic::Code>) -> &'a Counter {
        let i = code.map_or(CODES - 1, |c| (c as usize).min(CODES - 2));
        metrics.handled[i].get_or_init(|| {
            let code_name = code.map_or("Transport", crate::prom::code_name);
            metrics::counter!("grpc_server_handled_total", "grpc_service" => self.service.clone(), "grpc_method" => self.method.clone(), "grpc_type" => self.kind, "grpc_code" => code_name)
        })
    }
}

/// The RPC of `path`.
pub fn of(path: &str) -> &'static Rpc {
    let (known, unknown) = table();
    known.get(path).unwrap_or(unknown)
}

/// Every path the contracts declare ([`contactier_proto::METHODS`]), with gRPC's health and
/// reflection.
fn table() -> &'static (HashMap<&'static str, Rpc>, Rpc) {
    static TABLE: OnceLock<(HashMap<&'static str, Rpc>, Rpc)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let grpc = [
            ("/grpc.health.v1.Health/Check", "unary"),
            ("/grpc.health.v1.Health/Watch", "server_stream"),
            ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "bidi_stream"),
            ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi_stream"),
        ];
        let contracts = contactier_proto::METHODS.iter().map(|m| {
            let kind = match (m.client_streaming, m.server_streaming) {
                (false, false) => "unary",
                (false, true) => "server_stream",
                (true, false) => "client_stream",
                (true, true) => "bidi_stream",
            };
            (m.path, kind)
        });
        let known =
            grpc.into_iter().chain(contracts).map(|(path, kind)| (path, Rpc::new(path, kind))).collect();
        (known, Rpc::new("/unknown/unknown", "unary"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_known_by_their_contracts_and_the_rest_are_one() {
        let usage = of("/contactier.billing.v1.BillingService/GetUsage");
        assert_eq!(
            (usage.service.as_str(), usage.method.as_str(), usage.kind),
            ("contactier.billing.v1.BillingService", "GetUsage", "unary")
        );
        assert_eq!(usage.name(), "contactier.billing.v1.BillingService/GetUsage");
        assert_eq!(of("/grpc.health.v1.Health/Watch").kind, "server_stream");
        let a = of("/made.Up/One");
        assert!(std::ptr::eq(a, of("/made.Up/Two")), "one entry for every undeclared path");
        assert_eq!((a.service.as_str(), a.method.as_str()), ("unknown", "unknown"));
    }
}
