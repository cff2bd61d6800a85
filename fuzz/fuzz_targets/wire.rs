//! The server over the wire: a real agenda (SQLite in a temporary folder)
//! started once, and per input one call of any RPC of the contract, whose
//! request is either arbitrary bytes or an arbitrary valid message built
//! from the descriptor set. Every answer must come within 10 s (no hang) and
//! be the caller's error or an answer: never INTERNAL, UNKNOWN or DATA_LOSS,
//! which would be the server's fault.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use agenda::{
    config::{Options, Settings},
    service::mask,
    startup::Application,
};
use arbitrary::Unstructured;
use bytes::{Buf, BufMut, Bytes};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, MethodDescriptor, Value};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

const SECRET: &str = "fuzz-secret-that-is-long-enough-for-hs256";
const SCOPES: &str = "admin contacts.write activities.write tasks.admin changes.read";

/// The running server: a runtime of its own, a channel and a token.
struct Server {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    methods: Vec<MethodDescriptor>,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = Settings::resolve(Options {
            database_url: Some(format!("sqlite://{}", dir.path().join("agenda.db").display())),
            data_dir: Some(dir.path().to_path_buf()),
            listen: Some("127.0.0.1:0".parse().expect("address")),
            metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
            auth_hs256_secret: Some(SECRET.into()),
            ..Options::default()
        })
        .expect("settings");
        let channel = runtime.block_on(async {
            let app = Application::build(settings).await.expect("server builds");
            let addr = app.local_addr();
            tokio::spawn(app.run_until_stopped(std::future::pending()));
            Channel::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy()
        });
        let token = agenda::devmode::mint(SECRET, "fuzz", "fuzzer", SCOPES, Duration::from_secs(365 * 24 * 3600))
            .expect("token");
        let methods = mask::pool()
            .expect("contract")
            .services()
            .filter(|s| s.package_name() == "agenda.v1")
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .collect();
        Server {
            runtime,
            channel,
            authorization: format!("Bearer {token}").parse().expect("header"),
            methods,
            _dir: dir,
        }
    })
}

/// Sends and receives messages as the bytes they are.
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
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// An arbitrary value of a field's kind.
fn value(kind: &Kind, u: &mut Unstructured, depth: usize) -> arbitrary::Result<Value> {
    Ok(match kind {
        Kind::Double => Value::F64(u.arbitrary()?),
        Kind::Float => Value::F32(u.arbitrary()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(u.arbitrary()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(u.arbitrary()?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u.arbitrary()?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(u.arbitrary()?),
        Kind::Bool => Value::Bool(u.arbitrary()?),
        Kind::String => Value::String(u.arbitrary()?),
        Kind::Bytes => Value::Bytes(Bytes::from(u.arbitrary::<Vec<u8>>()?)),
        Kind::Enum(e) => {
            let known: Vec<i32> = e.values().map(|v| v.number()).collect();
            if u.ratio(1, 8)? || known.is_empty() { Value::EnumNumber(u.arbitrary()?) } else { Value::EnumNumber(*u.choose(&known)?) }
        }
        Kind::Message(m) => Value::Message(message(m, u, depth + 1)?),
    })
}

fn field_value(field: &FieldDescriptor, u: &mut Unstructured, depth: usize) -> arbitrary::Result<Value> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return Ok(Value::Map(Default::default())) };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut map = std::collections::HashMap::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let key = match value(&key_field.kind(), u, depth)? {
                Value::String(s) => MapKey::String(s),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                Value::Bool(b) => MapKey::Bool(b),
                _ => continue,
            };
            map.insert(key, value(&value_field.kind(), u, depth)?);
        }
        return Ok(Value::Map(map));
    }
    if field.is_list() {
        let mut items = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            items.push(value(&field.kind(), u, depth)?);
        }
        return Ok(Value::List(items));
    }
    value(&field.kind(), u, depth)
}

/// An arbitrary valid message of type `descriptor`.
fn message(descriptor: &MessageDescriptor, u: &mut Unstructured, depth: usize) -> arbitrary::Result<DynamicMessage> {
    let mut message = DynamicMessage::new(descriptor.clone());
    if depth > 5 {
        return Ok(message);
    }
    for field in descriptor.fields() {
        if u.is_empty() || !u.arbitrary::<bool>()? {
            continue;
        }
        let value = field_value(&field, u, depth)?;
        if message.try_set_field(&field, value).is_err() {
            continue;
        }
    }
    Ok(message)
}

fn call(server: &Server, input: &[u8]) -> Option<Status> {
    let mut u = Unstructured::new(input);
    let method = &server.methods[u.choose_index(server.methods.len()).ok()?];
    let raw = u.arbitrary::<bool>().ok()?;
    let body = if raw {
        Bytes::from(u.arbitrary::<Vec<u8>>().ok()?)
    } else {
        Bytes::from(message(&method.input(), &mut u, 0).ok()?.encode_to_vec())
    };
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = http::uri::PathAndQuery::try_from(path).ok()?;
    let mut request = Request::new(body);
    request.metadata_mut().insert("authorization", server.authorization.clone());
    let channel = server.channel.clone();
    let streaming = method.is_server_streaming();
    server.runtime.block_on(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.ok()?;
        let answer = async {
            if streaming {
                let mut stream = grpc.server_streaming(request, path, Raw).await?.into_inner();
                // One message (or none for a moment) is enough: the stream is dropped.
                let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
                Ok(())
            } else {
                grpc.unary(request, path, Raw).await.map(|_| ())
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(())) => None,
            Ok(Err(status)) => Some(status),
            Err(_) => panic!("the server did not answer within 10 s"),
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let server = server();
    if let Some(status) = call(server, input) {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown | Code::DataLoss),
            "a server fault: {status:?}"
        );
    }
});
