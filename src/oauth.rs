//! OAuth2 bearer tokens for mailbox logins (Exchange Online, Google Workspace): one
//! [`TokenSource`] per `[mail.*.oauth2]` block — a token file (`static`), the client credentials
//! grant (Microsoft Entra) or the JWT bearer grant signed with a Google service-account key
//! (`jwt_bearer`, RS256 with `ring`) — cached in memory and fetched again before it expires, plus
//! the SASL strings (`XOAUTH2`, RFC 7628 `OAUTHBEARER`) that carry it.
//!
//! Secrets (client secret, private key, tokens) never reach a log line or an error: errors name
//! the config key, the file, the endpoint and the server's `error` / `error_description`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::config::{OAuth2Config, OAuth2Source};

/// Fetch a new token this long before the current one expires (at most half its lifetime).
const REFRESH_EARLY: Duration = Duration::from_secs(60);
/// A whole token request (connect, TLS, request, response) gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The token endpoint's answer is small; more than this is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Assertion lifetime for the JWT bearer grant (Google's maximum).
const JWT_LIFETIME_SECS: i64 = 3600;
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A bearer token. `Debug` is redacted so it cannot slip into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Why no token could be had. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{key}: cannot read {file}: {cause}")]
    Read {
        key: String,
        file: String,
        cause: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: token endpoint {url}: {message}")]
    Transport {
        key: String,
        url: String,
        message: String,
    },
    /// The endpoint answered but gave no token: its HTTP status and its own words.
    #[error("{key}: token endpoint {url} refused: HTTP {status}{}", server_words(.error, .description))]
    Refused {
        key: String,
        url: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
}

fn server_words(error: &Option<String>, description: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(e) = error {
        s.push_str(&format!(", error {:?}", crate::text::escape_controls(e)));
    }
    if let Some(d) = description {
        s.push_str(&format!(
            ", error_description {:?}",
            crate::text::escape_controls(d)
        ));
    }
    s
}

struct Cached {
    token: BearerToken,
    /// `None`: no known expiry (a static token): kept until the server refuses it.
    refresh_at: Option<Instant>,
}

/// One configured source of bearer tokens with its cache.
pub struct TokenSource {
    cfg: OAuth2Config,
    tls: Arc<rustls::ClientConfig>,
    /// A tokio mutex: held across the token request so concurrent callers wait for one fetch.
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("key", &self.cfg.key)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(cfg: OAuth2Config) -> anyhow::Result<TokenSource> {
        let tls = crate::tls::tls_config(cfg.ca_file.as_deref())?;
        Ok(TokenSource {
            cfg,
            tls,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached token, or a new one when there is none or it expires within `REFRESH_EARLY`.
    pub async fn token(&self) -> Result<BearerToken, OAuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.refresh_at.is_none_or(|at| Instant::now() < at) {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// A new token whatever the cache holds: call this once after the server refused a token
    /// (a static token file is read again).
    pub async fn refresh(&self) -> Result<BearerToken, OAuthError> {
        let mut cache = self.cache.lock().await;
        *cache = None;
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let key = self.cfg.key;
        let (url, body) = match &self.cfg.source {
            OAuth2Source::Static { token_file } => {
                let t = read_secret(key, "token_file", token_file)?;
                if t.is_empty() {
                    return Err(OAuthError::Invalid {
                        key: format!("{key}.token_file"),
                        message: format!("{} is empty", token_file.display()),
                    });
                }
                tracing::debug!(key, "OAuth2 token read from its file");
                return Ok(Cached {
                    token: BearerToken(t),
                    refresh_at: None,
                });
            }
            OAuth2Source::ClientCredentials {
                token_url,
                client_id,
                client_secret_file,
                scope,
            } => {
                let secret = read_secret(key, "client_secret_file", client_secret_file)?;
                (
                    token_url.clone(),
                    client_credentials_body(client_id, &secret, scope),
                )
            }
            OAuth2Source::JwtBearer {
                key_file,
                subject,
                scope,
                token_url,
            } => {
                let sa = ServiceAccountKey::load(key, key_file)?;
                let url = match token_url {
                    Some(u) => u.clone(),
                    None => {
                        crate::config::check_token_url(&sa.token_uri).map_err(|message| {
                            OAuthError::Invalid {
                                key: format!("{key}.key_file"),
                                message: format!("token_uri: {message}"),
                            }
                        })?;
                        sa.token_uri.clone()
                    }
                };
                let iat = chrono::Utc::now().timestamp();
                let jwt = sa.assertion(subject, scope, &url, iat).map_err(|message| {
                    OAuthError::Invalid {
                        key: format!("{key}.key_file"),
                        message,
                    }
                })?;
                (url, jwt_bearer_body(&jwt))
            }
        };
        let started = Instant::now();
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.post_form(&url, body))
            .await
            .map_err(|_| OAuthError::Transport {
                key: key.to_string(),
                url: url.clone(),
                message: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            })??;
        let (token, expires_in) = parse_token_response(status, &body).map_err(|e| match e {
            ResponseError::Refused { error, description } => OAuthError::Refused {
                key: key.to_string(),
                url: url.clone(),
                status,
                error,
                description,
            },
            ResponseError::Malformed(message) => OAuthError::Transport {
                key: key.to_string(),
                url: url.clone(),
                message,
            },
        })?;
        tracing::info!(key, expires_in = ?expires_in, "OAuth2 token obtained");
        Ok(Cached {
            token,
            refresh_at: expires_in.map(|secs| started + refresh_after(Duration::from_secs(secs))),
        })
    }

    /// POSTs a form to the token endpoint: https, or http on a loopback host (checked at config).
    async fn post_form(&self, url: &str, body: String) -> Result<(u16, Bytes), OAuthError> {
        let key = self.cfg.key;
        let transport = |message: String| OAuthError::Transport {
            key: key.to_string(),
            url: url.to_string(),
            message,
        };
        crate::config::check_token_url(url).map_err(&transport)?;
        let uri: hyper::Uri = url.parse().map_err(|e| transport(format!("{e}")))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| transport("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| transport(format!("connecting: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| transport(format!("connecting: {e}")))?;
        let stream = if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| transport(format!("{e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| transport(format!("TLS: {e}")))?;
            crate::tls::Stream::Tls(Box::new(tls))
        } else {
            crate::tls::Stream::Plain(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or(host);
        let req = hyper::Request::builder()
            .method("POST")
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("host", authority)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("user-agent", concat!("invited/", env!("CARGO_PKG_VERSION")))
            // the connection ends with the response, so driving `conn` below ends too
            .header("connection", "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let exchange = async {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| transport(format!("HTTP: {e}")))?;
            let status = res.status().as_u16();
            let body = http_body_util::Limited::new(res.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, OAuthError>((status, body))
        };
        // No spawned task: the connection is driven here, beside the exchange, and ends with it.
        let (answer, _conn) = tokio::join!(exchange, conn);
        answer
    }
}

/// When to fetch again, measured from when the request started.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(REFRESH_EARLY.min(lifetime / 2))
}

fn read_secret(key: &str, name: &str, path: &Path) -> Result<String, OAuthError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|cause| OAuthError::Read {
            key: format!("{key}.{name}"),
            file: path.display().to_string(),
            cause,
        })
}

/// `application/x-www-form-urlencoded` of one value.
fn form_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_value(k), form_value(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The client credentials grant (RFC 6749 4.4) as Microsoft Entra takes it: the secret in the body.
pub fn client_credentials_body(client_id: &str, client_secret: &str, scope: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("scope", scope),
    ])
}

/// The JWT bearer grant (RFC 7523 2.1).
pub fn jwt_bearer_body(assertion: &str) -> String {
    form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)])
}

#[derive(Debug, PartialEq, Eq)]
enum ResponseError {
    Refused {
        error: Option<String>,
        description: Option<String>,
    },
    Malformed(String),
}

/// `{access_token, expires_in}` from a 2xx answer, else the server's `error` and
/// `error_description` (RFC 6749 5.2). Nothing else from the body is kept.
fn parse_token_response(
    status: u16,
    body: &[u8],
) -> Result<(BearerToken, Option<u64>), ResponseError> {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        v.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|x| x.as_str())
            .map(|s| s.chars().take(300).collect::<String>())
    };
    if !(200..300).contains(&status) {
        return Err(ResponseError::Refused {
            error: field("error"),
            description: field("error_description"),
        });
    }
    let v = v
        .as_ref()
        .ok_or_else(|| ResponseError::Malformed("the answer is not JSON".into()))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ResponseError::Refused {
            error: field("error").or(Some("no access_token in the answer".into())),
            description: field("error_description"),
        })?;
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(ResponseError::Malformed(
            "access_token has characters a bearer token cannot have".into(),
        ));
    }
    // Entra sends a number; some servers send a string.
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok((BearerToken(token.to_string()), expires_in))
}

/// A Google service-account key file (the JSON the console downloads); only what we use.
pub struct ServiceAccountKey {
    pub client_email: String,
    pub token_uri: String,
    key: ring::signature::RsaKeyPair,
}

impl ServiceAccountKey {
    pub fn load(key: &str, path: &PathBuf) -> Result<ServiceAccountKey, OAuthError> {
        let text = std::fs::read(path).map_err(|cause| OAuthError::Read {
            key: format!("{key}.key_file"),
            file: path.display().to_string(),
            cause,
        })?;
        ServiceAccountKey::parse(&text).map_err(|message| OAuthError::Invalid {
            key: format!("{key}.key_file"),
            message: format!("{}: {message}", path.display()),
        })
    }

    /// Errors say which field is wrong, never what it holds.
    pub fn parse(json: &[u8]) -> Result<ServiceAccountKey, String> {
        use rustls_pki_types::pem::PemObject;
        #[derive(serde::Deserialize)]
        struct Raw {
            client_email: Option<String>,
            private_key: Option<String>,
            token_uri: Option<String>,
        }
        let raw: Raw = serde_json::from_slice(json)
            .map_err(|e| format!("not a service-account key (JSON, line {})", e.line()))?;
        let client_email = raw.client_email.ok_or("no client_email")?;
        let pem = raw.private_key.ok_or("no private_key")?;
        let token_uri = raw
            .token_uri
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| "private_key is not a PKCS#8 PEM key".to_string())?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("private_key is not a usable RSA key ({e})"))?;
        Ok(ServiceAccountKey {
            client_email,
            token_uri,
            key,
        })
    }

    /// The signed assertion: header `{"alg":"RS256","typ":"JWT"}`, claims `iss`, `sub`, `scope`,
    /// `aud`, `iat`, `exp` = `iat` + 1 h. `iat` is a parameter: the caller reads the clock.
    pub fn assertion(
        &self,
        subject: &str,
        scope: &str,
        audience: &str,
        iat: i64,
    ) -> Result<String, String> {
        let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": subject,
            "scope": scope,
            "aud": audience,
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the assertion failed".to_string())?;
        Ok(format!("{signing_input}.{}", b64(&sig)))
    }

    /// The RSA public key (DER `RSAPublicKey`), for tests that verify an assertion.
    pub fn public_key_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

/// The `XOAUTH2` initial response (before base64, which the IMAP/SMTP client adds).
pub fn xoauth2(user: &str, token: &BearerToken) -> String {
    format!("user={user}\x01auth=Bearer {}\x01\x01", token.secret())
}

/// The RFC 7628 `OAUTHBEARER` initial response (before base64). `,` and `=` in the user name are
/// escaped as the GS2 header requires.
pub fn oauthbearer(user: &str, host: &str, port: u16, token: &BearerToken) -> String {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        token.secret()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PKCS8: &str = include_str!("../tests/data/dkim/rsa2048-pkcs8.pem");

    fn key_json() -> Vec<u8> {
        serde_json::json!({
            "type": "service_account",
            "client_email": "invited@project.iam.gserviceaccount.com",
            "private_key": RSA_PKCS8,
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
        .into_bytes()
    }

    fn b64d(s: &str) -> Vec<u8> {
        data_encoding::BASE64URL_NOPAD
            .decode(s.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn jwt_has_the_claims_and_a_signature_that_verifies_with_the_public_key() {
        let sa = ServiceAccountKey::parse(&key_json()).unwrap_or_else(|e| panic!("{e}"));
        let aud = "https://oauth2.googleapis.com/token";
        let jwt = sa
            .assertion(
                "partners@contoso.com",
                "https://mail.google.com/",
                aud,
                1_700_000_000,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&b64d(parts[0])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        let claims: serde_json::Value =
            serde_json::from_slice(&b64d(parts[1])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "invited@project.iam.gserviceaccount.com",
                "sub": "partners@contoso.com",
                "scope": "https://mail.google.com/",
                "aud": aud,
                "iat": 1_700_000_000,
                "exp": 1_700_003_600,
            })
        );
        let pk = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            sa.public_key_der(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(pk.verify(signed.as_bytes(), &b64d(parts[2])).is_ok());
        // and a changed claim does not
        let forged = format!("{}.{}", parts[0], parts[0]);
        assert!(pk.verify(forged.as_bytes(), &b64d(parts[2])).is_err());
    }

    #[test]
    fn key_file_errors_name_the_field_not_the_key() {
        let bad = serde_json::json!({"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nnotbase64!!\n-----END PRIVATE KEY-----\n"});
        let e = ServiceAccountKey::parse(bad.to_string().as_bytes())
            .err()
            .unwrap_or_default();
        assert!(e.contains("private_key"), "{e}");
        assert!(!e.contains("notbase64"), "{e}");
        let e = ServiceAccountKey::parse(b"{}").err().unwrap_or_default();
        assert_eq!(e, "no client_email");
        // token_uri defaults to Google's
        let mut v: serde_json::Value =
            serde_json::from_slice(&key_json()).unwrap_or_else(|e| panic!("{e}"));
        v.as_object_mut().map(|o| o.remove("token_uri"));
        let sa =
            ServiceAccountKey::parse(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sa.token_uri, "https://oauth2.googleapis.com/token");
    }

    #[test]
    fn request_bodies_are_form_encoded() {
        assert_eq!(
            client_credentials_body(
                "00000000-0000-0000-0000-000000000000",
                "s3cr+t/=&x y",
                "https://outlook.office365.com/.default"
            ),
            "grant_type=client_credentials&client_id=00000000-0000-0000-0000-000000000000\
             &client_secret=s3cr%2Bt%2F%3D%26x+y&scope=https%3A%2F%2Foutlook.office365.com%2F.default"
        );
        assert_eq!(
            jwt_bearer_body("aa.bb-_.cc"),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=aa.bb-_.cc"
        );
    }

    #[test]
    fn token_responses() {
        let ok = parse_token_response(
            200,
            br#"{"access_token":"abc.def","expires_in":3599,"token_type":"Bearer"}"#,
        );
        assert_eq!(ok, Ok((BearerToken("abc.def".into()), Some(3599))));
        let ok = parse_token_response(200, br#"{"access_token":"x","expires_in":"60"}"#);
        assert_eq!(ok, Ok((BearerToken("x".into()), Some(60))));
        let refused = parse_token_response(
            401,
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret"}"#,
        );
        assert_eq!(
            refused,
            Err(ResponseError::Refused {
                error: Some("invalid_client".into()),
                description: Some("AADSTS7000215: Invalid client secret".into())
            })
        );
        assert!(matches!(
            parse_token_response(502, b"<html>bad gateway</html>"),
            Err(ResponseError::Refused {
                error: None,
                description: None
            })
        ));
        assert!(matches!(
            parse_token_response(200, br#"{"access_token":"a\nb"}"#),
            Err(ResponseError::Malformed(_))
        ));
        // the error message carries the server's words and the status, and nothing of the body
        let e = OAuthError::Refused {
            key: "mail.inbound.oauth2".into(),
            url: "https://login.example/token".into(),
            status: 401,
            error: Some("invalid_client".into()),
            description: Some("bad secret".into()),
        };
        assert_eq!(
            e.to_string(),
            "mail.inbound.oauth2: token endpoint https://login.example/token refused: HTTP 401, error \"invalid_client\", error_description \"bad secret\""
        );
    }

    #[test]
    fn refresh_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn sasl_strings() {
        let t = BearerToken("ya29.tok".into());
        assert_eq!(
            xoauth2("partners@contoso.com", &t),
            "user=partners@contoso.com\x01auth=Bearer ya29.tok\x01\x01"
        );
        assert_eq!(
            oauthbearer("a,b=c@x", "imap.example", 993, &t),
            "n,a=a=2Cb=3Dc@x,\x01host=imap.example\x01port=993\x01auth=Bearer ya29.tok\x01\x01"
        );
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
    }
}
