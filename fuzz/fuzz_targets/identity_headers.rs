//! Identity headers as any caller can send them: a valid user, a valid
//! service name, or UNAUTHENTICATED.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use parley_server::{
    Caller, Uid,
    caller::{SERVICE_HEADER, UID_HEADER},
};

fuzz_target!(|headers: (Option<&[u8]>, Option<&[u8]>)| {
    let (uid, service) = headers;
    let mut map = HeaderMap::new();
    for (name, value) in [(UID_HEADER, uid), (SERVICE_HEADER, service)] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            map.insert(name, value);
        }
    }
    match Caller::from_headers(&map) {
        Ok(Caller::User(uid)) => assert!(Uid::parse(uid.as_str()).is_ok()),
        Ok(Caller::Service(name)) => {
            assert!(parley_server::credentials::valid_service_name(&name));
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated),
    }
});
