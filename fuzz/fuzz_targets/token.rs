//! Bearer tokens: arbitrary text, and tokens signed with the server's own
//! HS256 key around arbitrary headers and claims. No input may panic;
//! a token is accepted only with a sub, a tenant and a valid exp.
#![no_main]

use agenda::auth::{Verifier, VerifierConfig};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-that-is-long-enough-for-hs256";

#[derive(Arbitrary, Debug)]
enum Input {
    Text(String),
    Signed { header: String, claims: String },
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &str, claims: &str) -> String {
    use hmac::{Hmac, Mac};
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()) else { return signed };
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64(&mac.finalize().into_bytes()))
}

fuzz_target!(|input: Input| {
    let Ok(verifier) = Verifier::new(&VerifierConfig { hs256_secret: Some(SECRET.into()), ..Default::default() }) else {
        return;
    };
    let token = match input {
        Input::Text(text) => text,
        Input::Signed { header, claims } => sign(&header, &claims),
    };
    if let Ok(principal) = futures::executor::block_on(verifier.verify(&token)) {
        assert!(!principal.subject.trim().is_empty() && !principal.tenant.trim().is_empty());
        assert!(!principal.subject.chars().chain(principal.tenant.chars()).any(char::is_control));
    }
});
