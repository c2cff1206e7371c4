//! Outbound messages as data: the typed, versioned mail stored in the outbox, and the pure
//! step from a stored item to the bytes of a MIME message (render + build).

use chrono::Duration as ChronoDuration;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};
use serde::{Deserialize, Serialize};

use crate::dkim::Signer;
use crate::model::{Email, Purpose, RecordId, Timestamp};
use crate::templates::{Rendered, TemplateError, Templates};
use crate::token::{Claims, Keys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    ContactVerification,
    EnrollmentStatus,
    AgreementRequest,
    ProviderInvitation,
    InvitationReminder,
    ProviderNotice,
    CustomerInvitation,
    TestEmail,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::ContactVerification => "contact_verification",
            MailKind::EnrollmentStatus => "enrollment_status",
            MailKind::AgreementRequest => "agreement_request",
            MailKind::ProviderInvitation => "provider_invitation",
            MailKind::InvitationReminder => "invitation_reminder",
            MailKind::ProviderNotice => "provider_notice",
            MailKind::CustomerInvitation => "customer_invitation",
            MailKind::TestEmail => "test_email",
        }
    }

    /// Invitations and their reminders are what a provider sends in bulk: they carry
    /// `List-Unsubscribe` (RFC 2369 / 8058) and honour the suppression list. Verification,
    /// agreement and status mails answer the contact's own request, and notices go to staff.
    pub fn unsubscribable(self) -> bool {
        matches!(
            self,
            MailKind::ProviderInvitation | MailKind::InvitationReminder
        )
    }
}

/// How long the unsubscribe link of a message works, counted from when it was queued: well past
/// the invitation's own TTL (people unsubscribe from old mail; CAN-SPAM asks for 30 days at
/// least). Keep a rotated-out key in `[keys] files` this long for those links to keep working.
pub const UNSUBSCRIBE_TTL_DAYS: i64 = 90;

/// The template context of every mail kind (version 1): one flat shape, every field present,
/// so strict-mode templates can rely on it. `link` and `expires_at` are filled at render time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MailFieldsV1 {
    pub from_name: String,
    pub recipient_name: String,
    pub recipient_email: String,
    pub company: String,
    pub country: String,
    pub provider_name: String,
    pub provider_email: String,
    pub reseller_company: String,
    pub reseller_email: String,
    pub reply_enabled: bool,
    pub admin_access: bool,
    pub in_markets: bool,
    pub state: String,
    pub reason: String,
    pub needs_enrollment: bool,
}

impl MailFieldsV1 {
    /// Every field empty: what a sent item keeps (it is never rendered again).
    pub fn is_empty(&self) -> bool {
        *self == MailFieldsV1::default()
    }
}

/// What to sign into the message's link. The token itself is never stored: it is derived again
/// (deterministically) when the message is rendered, so the store holds no bearer secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkSpec {
    pub purpose: Purpose,
    pub generation: u32,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    Queued,
    Sent,
    Dead,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The message's `<ref>`: 128 random bits, also its Reply-To plus address and Message-ID.
    pub id: String,
    pub message_id: String,
    pub to: Email,
    // Left out of the stored JSON when empty (a sent item keeps neither, see `store`): store
    // format 4; read back as the same empty value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_name: String,
    pub kind: MailKind,
    pub locale: String,
    pub record: RecordId,
    #[serde(default, skip_serializing_if = "MailFieldsV1::is_empty")]
    pub fields: MailFieldsV1,
    pub link: Option<LinkSpec>,
    pub state: OutboxState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub next_attempt_at: Timestamp,
    pub sent_at: Option<Timestamp>,
}

impl OutboxItem {
    /// A new message, due now. `id` is its `<ref>`; the Message-ID is `<ref>@<domain>`.
    #[allow(clippy::too_many_arguments)] // every field is the caller's to choose; no defaults hide here
    pub fn queued(
        id: String,
        domain: &str,
        to: &Email,
        to_name: &str,
        kind: MailKind,
        locale: &str,
        record: RecordId,
        fields: MailFieldsV1,
        link: Option<LinkSpec>,
        now: Timestamp,
    ) -> OutboxItem {
        OutboxItem {
            message_id: format!("{id}@{domain}"),
            id,
            to: to.clone(),
            to_name: to_name.to_string(),
            kind,
            locale: locale.to_string(),
            record,
            fields,
            link,
            state: OutboxState::Queued,
            attempts: 0,
            last_error: None,
            created_at: now,
            next_attempt_at: now,
            sent_at: None,
        }
    }
}

#[derive(Serialize)]
struct Context<'a> {
    kind: &'static str,
    #[serde(flatten)]
    fields: &'a MailFieldsV1,
    link: String,
    expires_at: String,
    /// the `List-Unsubscribe` https link, also shown in the footer (empty for other kinds)
    unsubscribe: String,
}

/// `Auto-Submitted: auto-generated` (RFC 3834): tells vacation responders not to answer.
#[derive(Clone)]
struct AutoSubmitted;
impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_string())
    }
}

/// The Subject. Company and provider names are typed by other people: a name shaped like an
/// RFC 2047 encoded word (`=?utf-8?b?…?=`) would be decoded by the reader's mail client into
/// other text if written as it is. Such a subject is sent wholly encoded (UTF-8, base64 words),
/// which clients decode once, back to exactly the characters typed; any other subject is left to
/// lettre's usual encoding.
#[derive(Clone)]
struct Subject(String);
impl Header for Subject {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Subject(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        if self.0.contains("=?") {
            HeaderValue::dangerous_new_pre_encoded(
                Self::name(),
                self.0.clone(),
                encoded_words(&self.0),
            )
        } else {
            lettre::message::header::Subject::from(self.0.clone()).display()
        }
    }
}

/// `text` as RFC 2047 base64 encoded words of at most 36 bytes of UTF-8 each (60 characters, so
/// "Subject: " and one word fit a 76-character line), split on character boundaries and folded.
fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 36).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let chunk = &text.as_bytes()[start..end];
        words.push(format!(
            "=?utf-8?b?{}?=",
            data_encoding::BASE64.encode(chunk)
        ));
        start = end;
    }
    words.join("\r\n ")
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("building message: {0}")]
    Message(String),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::SignError),
}

/// The parts the builder needs from configuration.
pub struct Sender<'a> {
    pub from_name: &'a str,
    pub from: &'a Email,
    pub reply_to: &'a Email,
    pub public_url: &'a str,
    pub keys: &'a Keys,
    pub templates: &'a Templates,
    /// Signs every message when `[mail.dkim]` is configured.
    pub dkim: Option<&'a Signer>,
}

pub fn link_url(public_url: &str, token: &str) -> String {
    format!("{public_url}/t/{token}")
}

pub fn unsubscribe_url(public_url: &str, token: &str) -> String {
    format!("{public_url}/u/{token}")
}

/// `List-Unsubscribe: <https://…/u/{token}>, <mailto:…>` (RFC 2369; the https one is RFC 8058's).
#[derive(Clone)]
struct ListUnsubscribe(String);
impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): a POST to the https link
/// unsubscribes, without a page or a cookie, as mail providers' unsubscribe buttons do.
#[derive(Clone)]
struct ListUnsubscribePost;
impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}

pub fn format_expiry(secs: i64, locale: &str) -> String {
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    if locale == "ko-KR" {
        // Shown in KST for Korean readers, with the zone named.
        let kst = t + ChronoDuration::hours(9);
        kst.format("%Y-%m-%d %H:%M KST").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

fn address(e: &Email) -> Result<Address, BuildError> {
    Address::new(e.local(), e.domain()).map_err(|err| BuildError::Message(format!("{e}: {err}")))
}

impl Sender<'_> {
    /// The https unsubscribe link of an invitation or reminder (None for other kinds): signed
    /// for the message's record, recipient and generation, valid [`UNSUBSCRIBE_TTL_DAYS`] from
    /// when the message was queued. Derived, never stored, like the link token.
    pub fn unsubscribe_link(&self, item: &OutboxItem) -> Option<String> {
        let l = item.link.as_ref().filter(|_| item.kind.unsubscribable())?;
        let expires = item.created_at + ChronoDuration::days(UNSUBSCRIBE_TTL_DAYS);
        let token = self.keys.sign(
            &Claims {
                purpose: Purpose::Unsubscribe,
                record: item.record,
                generation: l.generation,
                expires_at: expires.timestamp(),
            },
            &item.to,
        );
        Some(unsubscribe_url(self.public_url, &token))
    }

    pub fn render(&self, item: &OutboxItem) -> Result<Rendered, BuildError> {
        let (link, expires_at) = match &item.link {
            Some(l) => {
                let token = self.keys.sign(
                    &Claims {
                        purpose: l.purpose,
                        record: item.record,
                        generation: l.generation,
                        expires_at: l.expires_at,
                    },
                    &item.to,
                );
                (
                    link_url(self.public_url, &token),
                    format_expiry(l.expires_at, &item.locale),
                )
            }
            None => (String::new(), String::new()),
        };
        let ctx = Context {
            kind: item.kind.as_str(),
            fields: &item.fields,
            link,
            expires_at,
            unsubscribe: self.unsubscribe_link(item).unwrap_or_default(),
        };
        Ok(self
            .templates
            .render_mail(item.kind.as_str(), &item.locale, &ctx)?)
    }

    /// The reply address that identifies this one message.
    pub fn reply_address(&self, reference: &str) -> Result<Address, BuildError> {
        Address::new(
            format!("{}+{reference}", self.reply_to.local()),
            self.reply_to.domain(),
        )
        .map_err(|e| BuildError::Message(e.to_string()))
    }

    /// Builds the MIME message. Mailboxes are assembled from validated parts, never parsed from
    /// user strings, so no field can inject a header.
    pub fn build(&self, item: &OutboxItem) -> Result<Message, BuildError> {
        let rendered = self.render(item)?;
        let from = Mailbox::new(
            Some(self.from_name.to_string()).filter(|s| !s.is_empty()),
            address(self.from)?,
        );
        let to = Mailbox::new(
            Some(item.to_name.clone()).filter(|s| !s.is_empty()),
            address(&item.to)?,
        );
        let reply_to = Mailbox::new(None, self.reply_address(&item.id)?);
        let mut builder = Message::builder()
            .from(from)
            .reply_to(reply_to)
            .to(to)
            .header(Subject(rendered.subject))
            .message_id(Some(format!("<{}>", item.message_id)))
            .header(AutoSubmitted);
        if let Some(url) = self.unsubscribe_link(item) {
            // the mailto is this message's own reply address, so it is matched like a reply
            let mailto = format!(
                "mailto:{}?subject=unsubscribe",
                self.reply_address(&item.id)?
            );
            builder = builder
                .header(ListUnsubscribe(format!("<{url}>, <{mailto}>")))
                .header(ListUnsubscribePost);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                part_body(rendered.text),
                part_body(rendered.html),
            ))
            .map_err(|e| BuildError::Message(e.to_string()))
    }

    /// The bytes the transport sends (SMTP, or the `.eml` file): the built message, with a
    /// DKIM-Signature on top when `[mail.dkim]` is configured (`t=` is `now`).
    pub fn wire_bytes(&self, item: &OutboxItem, now: Timestamp) -> Result<Vec<u8>, BuildError> {
        let bytes = self.build(item)?.formatted();
        match self.dkim {
            Some(signer) => Ok(signer.sign(&bytes, now.timestamp())?),
            None => Ok(bytes),
        }
    }
}

/// A text part's body. 7bit when the text allows it (RFC 2045 §2.7: US-ASCII, no NUL, CR only
/// in CRLF, lines of at most 998 octets): valid for every server, read as written, and no
/// encoding work per message (quoted-printable cost ~7% of the daemon's CPU on the send path).
/// lettre would choose quoted-printable for any line over 76 octets (our HTML's, a link's).
/// Anything else (Korean text, say): lettre's choice, quoted-printable or base64.
fn part_body(text: String) -> lettre::message::Body {
    use lettre::message::header::ContentTransferEncoding;
    let seven_bit = text.is_ascii()
        && !text.bytes().any(|b| b == 0 || b == b'\r')
        && text.split('\n').all(|line| line.len() <= 998);
    if !seven_bit {
        return lettre::message::Body::new(text);
    }
    let crlf = text.replace('\n', "\r\n");
    lettre::message::Body::dangerous_pre_encoded(
        crlf.into_bytes(),
        ContentTransferEncoding::SevenBit,
    )
}

// ---- what a send's outcome means for the item ------------------------------------------

/// How a send failed decides what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// This message was refused for now (4xx to its MAIL, RCPT or DATA, or the connection lost
    /// during its transaction): retried with backoff up to `max_age`.
    #[error("transient: {0}")]
    Transient(String),
    /// This message was refused for good (5xx to its MAIL, RCPT or DATA): dead-lettered, and
    /// the record becomes undeliverable.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The transport failed, not this message: connect, TLS, greeting, EHLO, AUTH (`535 5.7.8`),
    /// a 421, anything before MAIL FROM. The message stays queued and backs off, whatever its
    /// age; the recipient is never made undeliverable for it.
    #[error("transport: {0}")]
    Transport(String),
    /// The server asked us to slow down (421, or 4.7.x to MAIL/RCPT/DATA): the message stays
    /// queued without using up a retry, and the dispatcher pauses and sends more slowly.
    #[error("throttled: {0}")]
    Throttled(String),
    /// We could not build the message: a template that does not render (strict mode, a typo in
    /// a configured override), a DKIM key that does not sign. The operator's fault, never the
    /// recipient's: the item waits as a dead letter, naming the template, until it is fixed
    /// (SIGHUP reloads templates) and the item retried (`invited outbox retry ID`); the record
    /// is not touched and no provider is told.
    #[error("build: {0}")]
    Build(String),
}

impl SendError {
    /// The server's (or our) words, without the kind.
    pub fn words(&self) -> &str {
        match self {
            SendError::Transient(w)
            | SendError::Permanent(w)
            | SendError::Transport(w)
            | SendError::Throttled(w)
            | SendError::Build(w) => w,
        }
    }
}

/// Exponential backoff with jitter: ~2 s, 4 s, 8 s … capped at 10 minutes.
pub fn backoff(attempts: u32) -> std::time::Duration {
    use rand::Rng;
    let base = 2u64.saturating_pow(attempts.min(20)).min(600);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    std::time::Duration::from_millis((base as f64 * 1000.0 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_parts_go_7bit_and_others_are_encoded() {
        use lettre::message::header::ContentTransferEncoding as Cte;
        let long = format!("<p style=\"{}\">x</p>\n", "a".repeat(200));
        let b = part_body(format!("Hello,\n\n{long}.dot\n"));
        assert_eq!(b.encoding(), Cte::SevenBit);
        assert_eq!(
            String::from_utf8_lossy(b.into_vec().as_slice()),
            format!("Hello,\r\n\r\n{}.dot\r\n", long.replace('\n', "\r\n"))
        );
        for text in ["안녕하세요\n".to_string(), format!("{}\n", "a".repeat(999))] {
            assert_ne!(
                part_body(text.clone()).encoding(),
                Cte::SevenBit,
                "{text:?}"
            );
        }
    }

    #[test]
    fn encoded_word_shaped_subjects_decode_to_what_was_typed() {
        for subject in [
            "Contoso asks =?utf-8?b?QWRtaW4=?= to authorize it",
            "=?UTF-8?Q?x?= 한국어 이름과 =?iso-8859-1?q?=E9?= 그리고 아주 긴 회사 이름이 있는 제목입니다",
            "a=?",
        ] {
            let mut headers = lettre::message::header::Headers::new();
            headers.set(Subject(subject.to_string()));
            let raw = format!("{headers}\r\nbody\r\n");
            assert!(
                raw.lines().all(|l| l.len() <= 76),
                "lines stay short: {raw}"
            );
            let parsed = mail_parser::MessageParser::default()
                .parse(raw.as_bytes())
                .unwrap_or_else(|| panic!("parse {raw}"));
            assert_eq!(parsed.subject(), Some(subject), "{raw}");
        }
        let mut headers = lettre::message::header::Headers::new();
        headers.set(Subject("Plain subject".into()));
        assert_eq!(headers.to_string(), "Subject: Plain subject\r\n");
    }

    fn item(kind: MailKind, purpose: Option<Purpose>) -> OutboxItem {
        let to = Email::parse("Minji.Kim@Fabrikam.test").unwrap_or_else(|e| panic!("{e}"));
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        OutboxItem::queued(
            "aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            "invited.test",
            &to,
            "Kim Minji",
            kind,
            "en-US",
            RecordId([9; 16]),
            MailFieldsV1::default(),
            purpose.map(|purpose| LinkSpec {
                purpose,
                generation: 2,
                expires_at: 1_801_000_000,
            }),
            now,
        )
    }

    #[test]
    fn invitations_and_reminders_carry_one_click_unsubscribe_and_nothing_else_does() {
        let keys = Keys::from_bytes(
            "k1",
            std::iter::once(("k1".to_string(), vec![5u8; 32])).collect(),
        );
        let templates = Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
        let (from, reply_to) = (
            Email::parse("partners@invited.test").unwrap_or_else(|e| panic!("{e}")),
            Email::parse("replies@invited.test").unwrap_or_else(|e| panic!("{e}")),
        );
        let sender = Sender {
            from_name: "Contoso",
            from: &from,
            reply_to: &reply_to,
            public_url: "https://links.invited.test",
            keys: &keys,
            templates: &templates,
            dkim: None,
        };
        let cases = [
            (
                MailKind::ProviderInvitation,
                Some(Purpose::AuthorizeProvider),
                true,
            ),
            (
                MailKind::InvitationReminder,
                Some(Purpose::AuthorizeProvider),
                true,
            ),
            (
                MailKind::ContactVerification,
                Some(Purpose::VerifyContact),
                false,
            ),
            (
                MailKind::AgreementRequest,
                Some(Purpose::AcceptAgreement),
                false,
            ),
            (
                MailKind::CustomerInvitation,
                Some(Purpose::AcceptCustomer),
                false,
            ),
            (MailKind::EnrollmentStatus, None, false),
            (MailKind::ProviderNotice, None, false),
        ];
        for (kind, purpose, carries) in cases {
            let it = item(kind, purpose);
            let raw = sender
                .build(&it)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
                .formatted();
            assert!(
                raw.split(|b| *b == b'\n').all(|l| l.len() <= 998),
                "{kind:?}: header lines within RFC 5322's limit"
            );
            let m = mail_parser::MessageParser::default()
                .parse(&raw[..])
                .unwrap_or_else(|| panic!("{kind:?}: parse"));
            let lu = m
                .header_raw("List-Unsubscribe")
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
            let post = m.header_raw("List-Unsubscribe-Post").map(str::trim);
            if !carries {
                assert_eq!((lu, post), (None, None), "{kind:?}");
                continue;
            }
            assert_eq!(post, Some("List-Unsubscribe=One-Click"), "{kind:?}");
            let lu = lu.unwrap_or_default();
            let (https, mailto) = lu
                .split_once(", ")
                .unwrap_or_else(|| panic!("{kind:?}: {lu}"));
            assert_eq!(
                mailto,
                "<mailto:replies+aaaaaaaaaaaaaaaaaaaaaaaaaa@invited.test?subject=unsubscribe>"
            );
            let token = https
                .strip_prefix("<https://links.invited.test/u/")
                .and_then(|t| t.strip_suffix('>'))
                .unwrap_or_else(|| panic!("{kind:?}: {https}"));
            let (kid, claims, mac) = Keys::decode(token).unwrap_or_else(|| panic!("decode"));
            assert_eq!(claims.purpose, Purpose::Unsubscribe);
            assert_eq!((claims.record, claims.generation), (it.record, 2));
            assert_eq!(
                claims.expires_at,
                it.created_at.timestamp() + UNSUBSCRIBE_TTL_DAYS * 86_400,
                "{kind:?}: valid for {UNSUBSCRIBE_TTL_DAYS} days from queueing"
            );
            assert!(
                keys.verify_mac(&kid, &claims, &mac, &it.to),
                "bound to the recipient"
            );
            // the same link is shown in the body for people
            let text = m.body_text(0).unwrap_or_default();
            assert!(text.contains(&format!("/u/{token}")), "{kind:?}: {text}");
            assert!(
                m.body_html(0)
                    .unwrap_or_default()
                    .contains(&format!("/u/{token}")),
                "{kind:?}: html"
            );
            // rendering again gives the same token (a retry sends the same message)
            assert_eq!(
                sender.unsubscribe_link(&it),
                Some(format!("https://links.invited.test/u/{token}"))
            );
        }
    }

    #[test]
    fn encoded_word_shaped_display_names_are_encoded() {
        let name = "=?utf-8?b?QWRtaW4=?=";
        let mb = Mailbox::new(
            Some(name.into()),
            "a@b.test".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        let mut headers = lettre::message::header::Headers::new();
        headers.set(lettre::message::header::To::from(
            lettre::message::Mailboxes::from(mb),
        ));
        let raw = format!("{headers}\r\nbody\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap_or_else(|| panic!("parse {raw}"));
        let to = parsed.to().and_then(|a| a.first()).and_then(|a| a.name());
        assert_eq!(to, Some(name), "{raw}");
    }
}

#[cfg(test)]
mod dkim_tests {
    use super::*;
    use crate::config::DkimAlgorithm;
    use crate::dkim::Signer;

    /// The headers the DKIM signature must cover (the list).
    const REQUIRED: [&str; 8] = [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "mime-version",
        "content-type",
    ];

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wire_bytes_carry_a_dkim_signature_over_the_required_headers() {
        let templates = Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
        let mut k = std::collections::BTreeMap::new();
        k.insert("k1".to_string(), vec![7u8; 32]);
        let keys = Keys::from_bytes("k1", k);
        let (from, reply_to, to) = (
            email("partners@contoso.test"),
            email("replies@contoso.test"),
            email("minji.kim@fabrikam.test"),
        );
        let item = OutboxItem::queued(
            "ref1".into(),
            "contoso.test",
            &to,
            "Kim Minji",
            MailKind::ProviderInvitation,
            "ko-KR",
            RecordId::random(),
            MailFieldsV1 {
                company: "Fabrikam".into(),
                provider_name: "Contoso Korea".into(),
                ..Default::default()
            },
            Some(LinkSpec {
                purpose: Purpose::AuthorizeProvider,
                generation: 0,
                expires_at: 2_000_000_000,
            }),
            chrono::Utc::now(),
        );
        let rsa = include_str!("../tests/data/dkim/rsa2048-pkcs8.pem");
        let ed = include_str!("../tests/data/dkim/ed25519.pem");
        for (alg, pem, a) in [
            (DkimAlgorithm::RsaSha256, rsa, "rsa-sha256"),
            (DkimAlgorithm::Ed25519Sha256, ed, "ed25519-sha256"),
            (DkimAlgorithm::RsaSha256, "", ""),
        ] {
            let signer = (!pem.is_empty()).then(|| {
                Signer::from_pem("contoso.test", "invited", alg, pem.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"))
            });
            let sender = Sender {
                from_name: "Contoso",
                from: &from,
                reply_to: &reply_to,
                public_url: "https://links.contoso.test",
                keys: &keys,
                templates: &templates,
                dkim: signer.as_ref(),
            };
            let now = chrono::DateTime::from_timestamp(1_796_000_000, 0).unwrap_or_default();
            let bytes = sender
                .wire_bytes(&item, now)
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&bytes).to_string();
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            if signer.is_none() {
                assert!(
                    !text.contains("DKIM-Signature"),
                    "unsigned without [mail.dkim]"
                );
                continue;
            }
            assert!(text.starts_with("DKIM-Signature: "), "{head}");
            assert_eq!(text.matches("DKIM-Signature:").count(), 1, "{head}");
            let t = crate::dkim::tests::tags(&bytes);
            assert_eq!(t["v"], "1");
            assert_eq!(t["a"], a);
            assert_eq!(t["d"], "contoso.test");
            assert_eq!(t["s"], "invited");
            assert_eq!(t["c"], "relaxed/relaxed");
            assert_eq!(t["t"], "1796000000");
            let h: Vec<&str> = t["h"].split(':').collect();
            for name in REQUIRED {
                assert!(h.contains(&name), "h= lacks {name}: {}", t["h"]);
                // and the message has that header, so h= signs its value, not its absence
                let present = head.split("\r\n").any(|l| {
                    l.split_once(':')
                        .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
                });
                assert!(present, "the message has no {name}:\n{head}");
            }
        }
    }
}
