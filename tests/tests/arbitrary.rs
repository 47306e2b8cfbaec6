//! Every RPC of the contracts sent arbitrary messages, as a careless or hostile client would:
//! random values and lengths, numbers at the limits, unknown enum numbers, NUL characters,
//! impossible dates, nested messages filled at random. No call may panic or answer INTERNAL,
//! UNAVAILABLE or anything else that is not a client's error or a success; afterwards the counts
//! of the account agree across contacts, marketing-status and billing.
//!
//! The messages come from a seeded generator (`CONTACTIER_FUZZ_SEED`, default fixed), so a
//! failure names the seed and the call that reproduce it.

use bytes::{Buf, BufMut, Bytes};
use chrono::{TimeZone, Utc};
use contactier_e2e::{System, subscription};
use contactier_proto::billing::v1 as bpb;
use contactier_proto::common::v1::{Date, Edition, Term};
use contactier_proto::contacts::v1 as cpb;
use contactier_proto::marketing_status::v1 as mpb;
use contactier_runtime::auth::ACCOUNT_HEADER;
use contactier_runtime::db::Backend;
use contactier_runtime::testing::authed;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

const ACCOUNT: &str = "fuzz";
/// Messages sent to each RPC.
const PER_RPC: usize = 12;

/// Sends and receives encoded messages as they are.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn text(rng: &mut StdRng) -> String {
    match rng.random_range(0..14) {
        0 => String::new(),
        1 => "a\0b".into(),
        2 => "x".repeat(rng.random_range(255..300)),
        3 => "é".repeat(rng.random_range(1..5_000)),
        4 => "2026-02-30".into(),
        5 => "ada@example.com".into(),
        6 => "ADA@Example.com ".into(),
        7 => "%_\\'\";--".into(),
        8 => "first_name".into(),
        9 => "9223372036854775807".into(),
        10 => "-1".into(),
        11 => "true".into(),
        12 => "NA".into(),
        _ => (0..rng.random_range(1..20)).map(|_| rng.random_range('a'..='z')).collect(),
    }
}

fn int(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => -1,
        2 => i64::MAX,
        3 => i64::MIN,
        4 => i64::from(i32::MAX),
        5 => 1_000,
        6 => 1_000_000_001,
        _ => rng.random_range(-10..3_000),
    }
}

fn value(kind: &Kind, rng: &mut StdRng, depth: u32) -> Value {
    match kind {
        Kind::String => Value::String(text(rng)),
        Kind::Bytes => {
            let n = rng.random_range(0..256);
            Value::Bytes((0..n).map(|_| rng.random()).collect::<Vec<u8>>().into())
        }
        Kind::Bool => Value::Bool(rng.random()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(int(rng) as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int(rng)),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(int(rng) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(int(rng) as u64),
        Kind::Float => Value::F32(rng.random()),
        Kind::Double => Value::F64(rng.random()),
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(match rng.random_range(0..5) {
                0 => 99,
                1 => -1,
                _ => values[rng.random_range(0..values.len())],
            })
        }
        Kind::Message(m) => Value::Message(message(m, rng, depth + 1)),
    }
}

fn field_value(f: &FieldDescriptor, rng: &mut StdRng, depth: u32) -> Value {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else { unreachable!("a map's kind is its entry") };
        let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut map = HashMap::new();
        for _ in 0..rng.random_range(0..4) {
            let key = match value(&k.kind(), rng, depth) {
                Value::String(s) => MapKey::String(s),
                Value::I32(i) => MapKey::I32(i),
                Value::I64(i) => MapKey::I64(i),
                Value::Bool(b) => MapKey::Bool(b),
                other => panic!("map key {other:?}"),
            };
            map.insert(key, value(&v.kind(), rng, depth));
        }
        return Value::Map(map);
    }
    if f.is_list() {
        let n = if rng.random_range(0..20) == 0 { 1_001 } else { rng.random_range(0..4) };
        let n = if depth > 1 { n.min(3) } else { n };
        return Value::List((0..n).map(|_| value(&f.kind(), rng, depth)).collect());
    }
    value(&f.kind(), rng, depth)
}

fn message(desc: &MessageDescriptor, rng: &mut StdRng, depth: u32) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    if depth > 4 {
        return m;
    }
    for f in desc.fields() {
        // One field at most of a oneof; any field half the time.
        if let Some(o) = f.containing_oneof()
            && o.fields().any(|other| m.has_field(&other))
        {
            continue;
        }
        if rng.random_bool(0.5) {
            m.set_field(&f, field_value(&f, rng, depth));
        }
    }
    m
}

/// Codes a client's bad input, a missing thing or a state may answer; anything else is a fault.
fn client_side(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

fn owner(package: &str) -> &'static str {
    match package {
        "contactier.contacts.v1" => "contacts",
        "contactier.marketing_status.v1" => "marketing-status",
        "contactier.billing.v1" => "billing",
        "contactier.notification.v1" => "notification",
        _ => "billing",
    }
}

async fn call(
    s: &System,
    method: &prost_reflect::MethodDescriptor,
    body: Bytes,
    token: &str,
) -> Result<(), tonic::Status> {
    let service = method.parent_service();
    let channel = s.channel(owner(service.package_name()));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        http::uri::PathAndQuery::try_from(format!("/{}/{}", service.full_name(), method.name())).unwrap();
    fn header<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        req.metadata_mut().insert(ACCOUNT_HEADER, ACCOUNT.parse().unwrap());
        req.set_timeout(Duration::from_secs(20));
        req
    }
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => grpc.unary(header(tonic::Request::new(body), token), path, Raw).await.map(drop),
        (false, true) => {
            let mut stream = grpc
                .server_streaming(header(tonic::Request::new(body), token), path, Raw)
                .await?
                .into_inner();
            // A watch waits for news: the first answer or a moment of quiet will do.
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(r) => r.map(drop),
                Err(_) => Ok(()),
            }
        }
        (true, _) => {
            let parts = futures::stream::iter(vec![body.clone(), body]);
            let mut stream =
                grpc.streaming(header(tonic::Request::new(parts), token), path, Raw).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
    }
}

async fn every_rpc_takes_arbitrary_messages_without_a_fault(backend: Backend) {
    let seed: u64 =
        std::env::var("CONTACTIER_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_130);
    let mut rng = StdRng::seed_from_u64(seed);
    let pool = DescriptorPool::decode(contactier_proto::FILE_DESCRIPTOR_SET).unwrap();
    let start = Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap();
    let s = System::start(backend, start).await;
    let user = s.token(ACCOUNT, "fuzzer", &["read", "write", "admin"]);
    let service = s.service_token("fuzzer");
    let sub = subscription(Edition::Professional, Term::Monthly, Date { year: 2026, month: 4, day: 1 });
    let mut billing = bpb::billing_service_client::BillingServiceClient::new(s.channel("billing"));
    billing.create_subscription(authed(sub, &user)).await.unwrap();

    let mut calls = 0;
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    for svc in pool.services() {
        // The manual clock is an operator's: moving it to the year 9999 would only take long.
        if !svc.package_name().starts_with("contactier.") || svc.package_name() == "contactier.ops.v1" {
            continue;
        }
        let token = if svc.name().ends_with("InternalService") { &service } else { &user };
        for method in svc.methods() {
            for i in 0..PER_RPC {
                let msg = message(&method.input(), &mut rng, 0);
                let body = Bytes::from(prost::Message::encode_to_vec(&msg));
                let outcome = call(&s, &method, body, token).await;
                let code = outcome.as_ref().err().map_or(Code::Ok, tonic::Status::code);
                assert!(
                    client_side(code),
                    "{backend:?} seed {seed}, {} message {i}: {:?}\n{msg:?}",
                    method.full_name(),
                    outcome.unwrap_err()
                );
                *codes.entry(format!("{code:?}")).or_default() += 1;
                calls += 1;
            }
        }
    }
    assert!(calls > 800, "{calls} calls");
    // Some of it must have got through: a generator that only makes refusals proves little.
    assert!(codes.get("Ok").copied().unwrap_or(0) > calls / 10, "{backend:?}: {codes:?}");
    eprintln!("{backend:?} seed {seed}: {codes:?}");

    // Whatever was accepted, the account's counts agree across the services.
    s.advance_to(start + chrono::Duration::seconds(5)).await;
    let mut contacts = cpb::contacts_service_client::ContactsServiceClient::new(s.channel("contacts"));
    let total = contacts.count_contacts(authed(cpb::CountContactsRequest {}, &user)).await.unwrap();
    let total = total.into_inner().total_contacts;
    let mut status = mpb::marketing_status_service_client::MarketingStatusServiceClient::new(
        s.channel("marketing-status"),
    );
    let count = status.get_marketing_count(authed(mpb::GetMarketingCountRequest {}, &user)).await.unwrap();
    let count = count.into_inner().count.unwrap();
    assert_eq!(count.marketing + count.non_marketing, total, "{backend:?} seed {seed}: {count:?}");
    let usage =
        billing.get_usage(authed(bpb::GetUsageRequest {}, &user)).await.unwrap().into_inner().usage.unwrap();
    assert_eq!(usage.count_version, count.version, "{backend:?} seed {seed}: billing has the last count");
    assert_eq!(
        usage.marketing_count, count.marketing,
        "{backend:?} seed {seed}: {usage:?} against {count:?}"
    );
}

/// A unary call whose stream ends before its message (what a client cancelling at that moment
/// sends) is answered CANCELLED: it is no fault of the server's, to be counted or alerted on
/// as INTERNAL.
async fn a_unary_call_ended_before_its_message_is_cancelled_not_internal(backend: Backend) {
    let s = System::start(backend, Utc.with_ymd_and_hms(2026, 4, 20, 16, 0, 0).unwrap()).await;
    let user = s.token(ACCOUNT, "canceller", &["read", "write", "admin"]);
    let pool = DescriptorPool::decode(contactier_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut calls = 0;
    // The services a user's client calls; an internal one refuses the caller first.
    let public = |s: &prost_reflect::ServiceDescriptor| {
        s.package_name().starts_with("contactier.")
            && s.package_name() != "contactier.ops.v1"
            && !s.name().ends_with("InternalService")
    };
    for svc in pool.services().filter(public) {
        for method in svc.methods().filter(|m| !m.is_client_streaming() && !m.is_server_streaming()) {
            let mut grpc = tonic::client::Grpc::new(s.channel(owner(svc.package_name())));
            grpc.ready().await.unwrap();
            let path =
                http::uri::PathAndQuery::try_from(format!("/{}/{}", svc.full_name(), method.name())).unwrap();
            let mut req = tonic::Request::new(futures::stream::iter(Vec::<Bytes>::new()));
            req.metadata_mut().insert("authorization", format!("Bearer {user}").parse().unwrap());
            req.metadata_mut().insert(ACCOUNT_HEADER, ACCOUNT.parse().unwrap());
            let err = grpc.client_streaming(req, path, Raw).await.expect_err("no message, no answer");
            assert_eq!(err.code(), Code::Cancelled, "{backend:?}: {}: {err:?}", method.full_name());
            calls += 1;
        }
    }
    assert!(calls > 50, "{calls} unary methods");
}

contactier_runtime::backend_tests!(
    every_rpc_takes_arbitrary_messages_without_a_fault,
    a_unary_call_ended_before_its_message_is_cancelled_not_internal
);
