//! Passkeys (WebAuthn, webauthn-rs): registration and sign-in ceremonies, user verification
//! required. The browser gets the options as JSON and answers with JSON (`static/webauthn.js`
//! turns them into `navigator.credentials` calls); the ceremony's state waits in the web
//! session between the two requests.
//!
//! Sign-in names the account first (its address), then asks for one of its passkeys: any
//! authenticator works, also those that cannot keep discoverable credentials.

use webauthn_rs::prelude::{
    CredentialID, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

/// The WebAuthn records and user handles callers keep (the portal keeps patients' passkeys).
pub use webauthn_rs::prelude::{Passkey, Uuid};

/// The relying party: this server's web name and origin.
pub struct Passkeys {
    webauthn: Webauthn,
}

/// Why a ceremony failed, for the log and the page (never secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyError(pub String);

impl std::fmt::Display for PasskeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn failed(what: &str, error: impl std::fmt::Display) -> PasskeyError {
    PasskeyError(format!("{what}: {error}"))
}

impl Passkeys {
    /// `rp_id`: the host name the browser sees; `origin`: `https://host[:port]`.
    pub fn new(rp_id: &str, origin: &str) -> Result<Self, PasskeyError> {
        let origin = Url::parse(origin).map_err(|e| failed("the web origin", e))?;
        let webauthn = WebauthnBuilder::new(rp_id, &origin)
            .map_err(|e| failed("the passkey settings", e))?
            .rp_name("Sealpost")
            .build()
            .map_err(|e| failed("the passkey settings", e))?;
        Ok(Self { webauthn })
    }

    /// Starts adding a passkey to the account whose passkey user handle is `user`: the options
    /// for the browser and the state to keep, both JSON. `existing` keys are excluded, so
    /// one authenticator is not registered twice.
    pub fn start_registration(
        &self,
        user: Uuid,
        address: &str,
        display_name: &str,
        existing: &[Passkey],
    ) -> Result<(String, String), PasskeyError> {
        let exclude: Vec<CredentialID> = existing.iter().map(|k| k.cred_id().clone()).collect();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user, address, display_name, Some(exclude))
            .map_err(|e| failed("starting the registration", e))?;
        Ok((to_json(&options)?, to_json(&state)?))
    }

    /// Checks the browser's answer against the kept state: the new passkey.
    pub fn finish_registration(
        &self,
        state: &str,
        response: &str,
    ) -> Result<Passkey, PasskeyError> {
        let state: PasskeyRegistration = from_json(state)?;
        let response: RegisterPublicKeyCredential = from_json(response)?;
        self.webauthn
            .finish_passkey_registration(&response, &state)
            .map_err(|e| failed("the passkey was not accepted", e))
    }

    /// Starts a sign-in with one of `keys`: options for the browser, state to keep.
    pub fn start_sign_in(&self, keys: &[Passkey]) -> Result<(String, String), PasskeyError> {
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(keys)
            .map_err(|e| failed("starting the sign-in", e))?;
        Ok((to_json(&options)?, to_json(&state)?))
    }

    /// Checks the browser's answer: the index in `keys` of the passkey used, whose counter
    /// and backup state are brought up to date (the caller stores `keys` again). User
    /// verification was required and is checked by webauthn-rs.
    pub fn finish_sign_in(
        &self,
        state: &str,
        response: &str,
        keys: &mut [Passkey],
    ) -> Result<usize, PasskeyError> {
        let state: PasskeyAuthentication = from_json(state)?;
        let response: PublicKeyCredential = from_json(response)?;
        let result = self
            .webauthn
            .finish_passkey_authentication(&response, &state)
            .map_err(|e| failed("the passkey was not accepted", e))?;
        if !result.user_verified() {
            return Err(PasskeyError(
                "the authenticator did not verify the user".into(),
            ));
        }
        let index = keys
            .iter()
            .position(|k| k.cred_id() == result.cred_id())
            .ok_or_else(|| PasskeyError("an unknown passkey".into()))?;
        keys[index].update_credential(&result);
        Ok(index)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, PasskeyError> {
    serde_json::to_string(value).map_err(|e| failed("encoding", e))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PasskeyError> {
    serde_json::from_str(text).map_err(|e| failed("a malformed passkey message", e))
}

/// A passkey user handle: random, so that it says nothing about the account.
pub fn new_user_handle() -> Uuid {
    Uuid::from_bytes(rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

    const ORIGIN: &str = "https://mail.clinic.example:8443";

    fn register(
        passkeys: &Passkeys,
        device: &mut SoftPasskey,
        user: Uuid,
        existing: &[Passkey],
    ) -> Passkey {
        let (options, state) = passkeys
            .start_registration(user, "alice@clinic.example", "Alice", existing)
            .unwrap();
        let options: CreationChallengeResponse = serde_json::from_str(&options).unwrap();
        let answer = device
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        passkeys
            .finish_registration(&state, &serde_json::to_string(&answer).unwrap())
            .unwrap()
    }

    fn sign_in(
        passkeys: &Passkeys,
        device: &mut SoftPasskey,
        origin: &str,
        keys: &mut [Passkey],
    ) -> Result<usize, PasskeyError> {
        let (options, state) = passkeys.start_sign_in(keys).unwrap();
        let options: RequestChallengeResponse = serde_json::from_str(&options).unwrap();
        let answer = device
            .do_authentication(Url::parse(origin).unwrap(), options)
            .map_err(|e| PasskeyError(format!("{e:?}")))?;
        passkeys.finish_sign_in(&state, &serde_json::to_string(&answer).unwrap(), keys)
    }

    #[test]
    fn register_two_passkeys_then_sign_in_with_each() {
        let passkeys = Passkeys::new("mail.clinic.example", ORIGIN).unwrap();
        let user = new_user_handle();
        let mut phone = SoftPasskey::new(true);
        let mut laptop = SoftPasskey::new(true);
        let first = register(&passkeys, &mut phone, user, &[]);
        let second = register(&passkeys, &mut laptop, user, std::slice::from_ref(&first));
        assert_ne!(first.cred_id(), second.cred_id());
        let mut keys = vec![first, second];
        assert_eq!(sign_in(&passkeys, &mut laptop, ORIGIN, &mut keys), Ok(1));
        assert_eq!(sign_in(&passkeys, &mut phone, ORIGIN, &mut keys), Ok(0));
        // Stored and read back (JSON in the credential record), still good.
        let stored = serde_json::to_string(&keys).unwrap();
        let mut keys: Vec<Passkey> = serde_json::from_str(&stored).unwrap();
        assert_eq!(sign_in(&passkeys, &mut phone, ORIGIN, &mut keys), Ok(0));
    }

    #[test]
    fn a_ceremony_fails_for_another_origin_another_key_or_a_replayed_answer() {
        let passkeys = Passkeys::new("mail.clinic.example", ORIGIN).unwrap();
        let user = new_user_handle();
        let mut phone = SoftPasskey::new(true);
        let mut keys = vec![register(&passkeys, &mut phone, user, &[])];
        // A phishing site's origin: the browser would say so in the client data.
        assert!(sign_in(
            &passkeys,
            &mut phone,
            "https://mail.clinic-example.net",
            &mut keys
        )
        .is_err());
        // An authenticator that holds none of the account's keys.
        let mut stranger = SoftPasskey::new(true);
        assert!(sign_in(&passkeys, &mut stranger, ORIGIN, &mut keys).is_err());
        // An answer replayed against a new challenge.
        let (options, state) = passkeys.start_sign_in(&keys).unwrap();
        let options: RequestChallengeResponse = serde_json::from_str(&options).unwrap();
        let answer = serde_json::to_string(
            &phone
                .do_authentication(Url::parse(ORIGIN).unwrap(), options)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(passkeys.finish_sign_in(&state, &answer, &mut keys), Ok(0));
        let (_, fresh_state) = passkeys.start_sign_in(&keys).unwrap();
        assert!(
            passkeys
                .finish_sign_in(&fresh_state, &answer, &mut keys)
                .is_err(),
            "replayed"
        );
        assert!(passkeys
            .finish_sign_in(&fresh_state, "{not json", &mut keys)
            .is_err());
    }

    #[test]
    fn an_authenticator_that_does_not_verify_the_user_is_refused() {
        let passkeys = Passkeys::new("mail.clinic.example", ORIGIN).unwrap();
        let (options, state) = passkeys
            .start_registration(new_user_handle(), "alice@clinic.example", "Alice", &[])
            .unwrap();
        // A client that tells the authenticator user verification does not matter, and an
        // authenticator that then skips it: the server still wants it.
        assert!(
            options.contains(r#""userVerification":"required""#),
            "{options}"
        );
        let options = options.replace(
            r#""userVerification":"required""#,
            r#""userVerification":"discouraged""#,
        );
        let options: CreationChallengeResponse = serde_json::from_str(&options).unwrap();
        let mut no_uv = SoftPasskey::new(false);
        let answer = no_uv
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        let refused =
            passkeys.finish_registration(&state, &serde_json::to_string(&answer).unwrap());
        assert!(refused.is_err(), "{refused:?}");
    }
}
