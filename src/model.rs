//! Records, their states and the pure state machines: no I/O, no clock (time comes in as `now`).

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// A point in time, UTC; serialised as RFC 3339.
pub type Timestamp = DateTime<Utc>;

pub fn rfc3339(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A 128-bit record id, printed as 26 lowercase base32 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    pub fn random() -> Self {
        RecordId(random_bytes())
    }

    /// A new record's id: the creation time in milliseconds (48 bits, big-endian) and 80 random
    /// bits, as a ULID. Ids made close together share their leading characters, so a bulk
    /// CSV's records (and their provider index entries) land side by side in the store instead
    /// of all over it: about a third less store work per row (BENCHMARKS.md, bulk enqueue).
    /// An id is no secret (links are signed), so the time in it gives nothing away.
    pub fn new(now: Timestamp) -> Self {
        let mut b: [u8; 16] = random_bytes();
        let ms = now.timestamp_millis().max(0) as u64;
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        RecordId(b)
    }
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = data_encoding::HEXLOWER_PERMISSIVE
                .decode(s.as_bytes())
                .ok()?;
            return bytes.try_into().ok().map(RecordId);
        }
        if s.len() != 26 {
            return None;
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(s.to_ascii_uppercase().as_bytes())
            .ok()?;
        bytes.try_into().ok().map(RecordId)
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// 128 random bits as 26 lowercase base32 characters: the `<ref>` of a plus address and Message-ID.
pub fn random_ref() -> String {
    base32(&random_bytes::<16>())
}

pub fn base32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32(&self.0))
    }
}
impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}
impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}
impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RecordId::parse(&s).ok_or_else(|| serde::de::Error::custom("bad record id"))
    }
}

/// An email address, validated, compared case-insensitively (the canonical form is lowercase).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        check_text(s)?;
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 254 {
            return Err("is longer than 254 characters".into());
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| "is not an email address (no @)".to_string())?;
        if local.is_empty() || local.len() > 64 {
            return Err("has a local part that is empty or longer than 64 characters".into());
        }
        if domain.is_empty() || domain.len() > 253 {
            return Err("has an empty or too long domain".into());
        }
        if local.contains('@')
            || local.contains(' ')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || local.contains(['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\'])
        {
            return Err("has a local part with characters not allowed here".into());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        {
            return Err("has a domain that is not a valid host name".into());
        }
        Ok(Email(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn local(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or("")
    }
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}
impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Email::parse(&s)
    }
}
impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}
impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

/// No CR, LF or other control characters in any field (header injection, log forging), and no
/// bidi overrides/isolates or Unicode line separators (they make a name read differently than
/// it is, e.g. `\u{202e}` turning "moc.evil" around).
pub fn check_text(s: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|&c| crate::text::is_escaped(c)) {
        return Err(format!(
            "contains a control character (U+{:04X}); line breaks and control characters are not allowed",
            c as u32
        ));
    }
    Ok(())
}

/// The channel a transition came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Cli,
    Api,
    Link,
    Reply,
    Bounce,
    Timer,
    /// a staff member in the web console (the entry names them: `Transition::staff`)
    Console,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    pub at: String,
    pub from: String,
    pub to: String,
    pub channel: Channel,
    pub detail: String,
    /// The Message-IDs of the emails this change queued: kept here when the outbox item and its
    /// reply reference are pruned (`[store] retention`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
    /// The staff member who made this change in the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<Email>,
}

macro_rules! state_enum {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
            pub const ALL: &'static [&'static str] = &[$($text),*];
        }
    };
}

state_enum!(EnrollmentState {
    PendingVerification => "pending_verification",
    InReview => "in_review",
    Approved => "approved",
    Active => "active",
    Rejected => "rejected",
    Expired => "expired",
    Undeliverable => "undeliverable",
});

state_enum!(AuthorizationState {
    Invited => "invited",
    Authorized => "authorized",
    Declined => "declined",
    Expired => "expired",
    Undeliverable => "undeliverable",
    Revoked => "revoked",
});

state_enum!(CustomerState {
    Invited => "invited",
    Accepted => "accepted",
    Declined => "declined",
    Expired => "expired",
    Undeliverable => "undeliverable",
    Revoked => "revoked",
});

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub postal_code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contact {
    pub name: String,
    pub email: Email,
    pub phone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Support {
    pub email: Email,
    pub phone: String,
    #[serde(default)]
    pub website: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mpn {
    pub id: String,
    pub country: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub state: EnrollmentState,
    pub company: String,
    pub country: String,
    pub address: Address,
    pub primary_contact: Contact,
    pub support: Support,
    pub mpn: Mpn,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderAuthorization {
    pub state: AuthorizationState,
    pub provider: String,
    pub email: Email,
    pub company: String,
    pub country: String,
    #[serde(default)]
    pub contact_name: String,
    pub admin_access: bool,
    pub enrollment: Option<RecordId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerInvitation {
    pub state: CustomerState,
    pub provider: String,
    pub reseller_enrollment: RecordId,
    pub reseller_email: Email,
    pub authorization: RecordId,
    pub email: Email,
    pub company: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Enrollment(Enrollment),
    ProviderAuthorization(ProviderAuthorization),
    CustomerInvitation(CustomerInvitation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Enrollment,
    ProviderAuthorization,
    CustomerInvitation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Enrollment => "enrollment",
            Kind::ProviderAuthorization => "provider_authorization",
            Kind::CustomerInvitation => "customer_invitation",
        }
    }
}

/// What a link or a reply is for; bound into every token and every reply reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    VerifyContact,
    AuthorizeProvider,
    AcceptAgreement,
    AcceptCustomer,
    /// The `List-Unsubscribe` link of an invitation or reminder: stop this provider's invitations
    /// to this address. Not a state the record waits for, so it outlives resends (see `token`).
    Unsubscribe,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyContact => "verify_contact",
            Purpose::AuthorizeProvider => "authorize_provider",
            Purpose::AcceptAgreement => "accept_agreement",
            Purpose::AcceptCustomer => "accept_customer",
            Purpose::Unsubscribe => "unsubscribe",
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Purpose::VerifyContact => 1,
            Purpose::AuthorizeProvider => 2,
            Purpose::AcceptAgreement => 3,
            Purpose::AcceptCustomer => 4,
            Purpose::Unsubscribe => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Purpose::VerifyContact),
            2 => Some(Purpose::AuthorizeProvider),
            3 => Some(Purpose::AcceptAgreement),
            4 => Some(Purpose::AcceptCustomer),
            5 => Some(Purpose::Unsubscribe),
            _ => None,
        }
    }
    /// Whether a token for this purpose dies when the record's link generation moves on (resend,
    /// revoke). Every acting link does; an unsubscribe link does not: one in an older email must
    /// keep working, and all it can do is stop mail.
    pub fn bound_to_generation(self) -> bool {
        self != Purpose::Unsubscribe
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: RecordId,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Link generation: bumped by resend and revoke, so older links and replies stop working.
    pub generation: u32,
    pub locale: String,
    /// When the current link (and, for awaiting states, the record) expires.
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub reminded: bool,
    pub history: Vec<Transition>,
    pub body: Body,
}

/// What a transition causes besides the record's own change (its new state and history entry,
/// which the transition method makes): the mails to queue and the timers to arm. `App::carry_out`
/// writes the record and these in the same transaction, whichever store backend is configured,
/// so what a transition means is said once, here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "a transition's mails and timers must be carried out (App::carry_out)"]
pub struct Effects {
    pub mails: Vec<Mail>,
    /// arm the current link's reminder and expiry timers (the policy decides when)
    pub link_timers: bool,
    /// arm the expiry timer at this time (a reminder stood for it until it ran)
    pub expire_at: Option<Timestamp>,
}

/// A mail a transition causes, to the record's recipient or its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mail {
    /// the record's current link (an invitation, a verification, the agreement), or its reminder
    Link { reminder: bool },
    /// the enrollment's new status, with a note for the contact (a rejection's reason)
    Status { note: String },
    /// to the provider: the invitation's new state, with the server's or our own words
    ProviderNotice { words: String },
}

impl Effects {
    fn mail(m: Mail) -> Effects {
        Effects {
            mails: vec![m],
            ..Effects::default()
        }
    }

    fn status() -> Effects {
        Effects::mail(Mail::Status {
            note: String::new(),
        })
    }

    fn notice(words: &str) -> Effects {
        Effects::mail(Mail::ProviderNotice {
            words: words.to_string(),
        })
    }
}

/// How a channel reads in a history entry ("contact verified by link").
fn via(channel: Channel) -> &'static str {
    match channel {
        Channel::Link => " by link",
        Channel::Reply => " by reply",
        _ => "",
    }
}

/// A refused transition: the record is in a state where this does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {id} is {state}: cannot {what}")]
pub struct Refusal {
    pub kind: &'static str,
    pub id: String,
    pub state: &'static str,
    pub what: String,
}

impl Record {
    pub fn kind(&self) -> Kind {
        match &self.body {
            Body::Enrollment(_) => Kind::Enrollment,
            Body::ProviderAuthorization(_) => Kind::ProviderAuthorization,
            Body::CustomerInvitation(_) => Kind::CustomerInvitation,
        }
    }
    pub fn state_str(&self) -> &'static str {
        match &self.body {
            Body::Enrollment(e) => e.state.as_str(),
            Body::ProviderAuthorization(a) => a.state.as_str(),
            Body::CustomerInvitation(c) => c.state.as_str(),
        }
    }
    /// The address the record's emails go to and whose replies count.
    pub fn recipient(&self) -> &Email {
        match &self.body {
            Body::Enrollment(e) => &e.primary_contact.email,
            Body::ProviderAuthorization(a) => &a.email,
            Body::CustomerInvitation(c) => &c.email,
        }
    }
    pub fn provider(&self) -> Option<&str> {
        match &self.body {
            Body::Enrollment(_) => None,
            Body::ProviderAuthorization(a) => Some(&a.provider),
            Body::CustomerInvitation(c) => Some(&c.provider),
        }
    }
    pub fn company(&self) -> &str {
        match &self.body {
            Body::Enrollment(e) => &e.company,
            Body::ProviderAuthorization(a) => &a.company,
            Body::CustomerInvitation(c) => &c.company,
        }
    }
    /// The purpose a link or reply for this record currently serves, if the record awaits one.
    pub fn awaiting(&self) -> Option<Purpose> {
        match &self.body {
            Body::Enrollment(e) => match e.state {
                EnrollmentState::PendingVerification => Some(Purpose::VerifyContact),
                EnrollmentState::Approved => Some(Purpose::AcceptAgreement),
                _ => None,
            },
            Body::ProviderAuthorization(a) => {
                (a.state == AuthorizationState::Invited).then_some(Purpose::AuthorizeProvider)
            }
            Body::CustomerInvitation(c) => {
                (c.state == CustomerState::Invited).then_some(Purpose::AcceptCustomer)
            }
        }
    }

    pub fn enrollment(&self) -> Option<&Enrollment> {
        match &self.body {
            Body::Enrollment(e) => Some(e),
            _ => None,
        }
    }
    pub fn authorization(&self) -> Option<&ProviderAuthorization> {
        match &self.body {
            Body::ProviderAuthorization(a) => Some(a),
            _ => None,
        }
    }
    pub fn customer(&self) -> Option<&CustomerInvitation> {
        match &self.body {
            Body::CustomerInvitation(c) => Some(c),
            _ => None,
        }
    }

    fn refuse(&self, what: &str) -> Refusal {
        Refusal {
            kind: self.kind().as_str(),
            id: self.id.to_string(),
            state: self.state_str(),
            what: what.to_string(),
        }
    }

    fn push(&mut self, from: &'static str, channel: Channel, detail: &str, now: Timestamp) {
        let to = self.state_str();
        self.history.push(Transition {
            at: rfc3339(&now),
            from: from.to_string(),
            to: to.to_string(),
            channel,
            detail: detail.to_string(),
            message_ids: Vec::new(),
            staff: None,
        });
        self.updated_at = now;
    }

    pub fn new(body: Body, locale: &str, channel: Channel, detail: &str, now: Timestamp) -> Record {
        let mut r = Record {
            id: RecordId::new(now),
            created_at: now,
            updated_at: now,
            generation: 0,
            locale: locale.to_string(),
            expires_at: None,
            reminded: false,
            history: Vec::new(),
            body,
        };
        r.push("", channel, detail, now);
        r
    }

    pub fn set_enrollment(
        &mut self,
        to: EnrollmentState,
        channel: Channel,
        detail: &str,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        use EnrollmentState::*;
        let from = match &self.body {
            Body::Enrollment(e) => e.state,
            _ => return Err(self.refuse(to.as_str())),
        };
        let ok = matches!(
            (from, to),
            (PendingVerification, InReview)
                | (InReview, Approved)
                | (Approved, Active)
                | (InReview, Rejected)
                | (PendingVerification, Expired)
                | (PendingVerification | Approved, Undeliverable)
        );
        if !ok {
            return Err(self.refuse(&format!("become {}", to.as_str())));
        }
        if let Body::Enrollment(e) = &mut self.body {
            e.state = to;
        }
        self.push(from.as_str(), channel, detail, now);
        Ok(())
    }

    pub fn set_authorization(
        &mut self,
        to: AuthorizationState,
        channel: Channel,
        detail: &str,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        use AuthorizationState::*;
        let from = match &self.body {
            Body::ProviderAuthorization(a) => a.state,
            _ => return Err(self.refuse(to.as_str())),
        };
        let ok = matches!(
            (from, to),
            (
                Invited,
                Authorized | Declined | Expired | Undeliverable | Revoked
            ) | (Authorized, Revoked)
        );
        if !ok {
            return Err(self.refuse(&format!("become {}", to.as_str())));
        }
        if let Body::ProviderAuthorization(a) = &mut self.body {
            a.state = to;
        }
        if to == Revoked {
            self.generation += 1;
        }
        self.push(from.as_str(), channel, detail, now);
        Ok(())
    }

    pub fn set_customer(
        &mut self,
        to: CustomerState,
        channel: Channel,
        detail: &str,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        use CustomerState::*;
        let from = match &self.body {
            Body::CustomerInvitation(c) => c.state,
            _ => return Err(self.refuse(to.as_str())),
        };
        let ok = matches!(
            (from, to),
            (
                Invited,
                Accepted | Declined | Expired | Undeliverable | Revoked
            )
        );
        if !ok {
            return Err(self.refuse(&format!("become {}", to.as_str())));
        }
        if let Body::CustomerInvitation(c) = &mut self.body {
            c.state = to;
        }
        if to == Revoked {
            self.generation += 1;
        }
        self.push(from.as_str(), channel, detail, now);
        Ok(())
    }

    /// Removing admin access keeps the authorization; recorded as a same-state history entry.
    /// Nobody is mailed.
    pub fn remove_admin_access(
        &mut self,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        match &mut self.body {
            Body::ProviderAuthorization(a)
                if a.state == AuthorizationState::Authorized && a.admin_access =>
            {
                a.admin_access = false;
            }
            _ => {
                return Err(self
                    .refuse("remove admin access (needs an authorized record with admin access)"))
            }
        }
        self.push("authorized", channel, "admin access removed", now);
        Ok(Effects::default())
    }

    /// The address went on the provider's suppression list (`reason`: how) while this invitation
    /// waited: it is declined and no further invitation goes there; the provider hears it in
    /// `words`.
    pub fn decline_suppressed(
        &mut self,
        reason: &str,
        words: &str,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        let detail = format!("declined: {reason}; no further invitations to this address");
        self.set_authorization(AuthorizationState::Declined, channel, &detail, now)?;
        Ok(Effects::notice(words))
    }

    /// The one reminder before an invitation expires: a same-state history entry, which keeps
    /// the reminder's Message-ID; the reminder mail, and the expiry it stood for armed.
    pub fn remind(&mut self, now: Timestamp) -> Effects {
        self.reminded = true;
        let state = self.state_str();
        self.push(state, Channel::Timer, "reminder sent", now);
        Effects {
            mails: vec![Mail::Link { reminder: true }],
            ..Effects::default()
        }
    }

    /// A fresh link: the generation goes up so every older link and reply reference dies.
    pub fn renew_link(
        &mut self,
        expires_at: Timestamp,
        detail: &str,
        channel: Channel,
        now: Timestamp,
    ) {
        self.generation += 1;
        self.expires_at = Some(expires_at);
        self.reminded = false;
        let state = self.state_str();
        self.push(state, channel, detail, now);
    }

    /// A failed delivery makes any record that still waits on its recipient undeliverable; the
    /// provider hears it with the server's `words`.
    pub fn bounce(
        &mut self,
        detail: &str,
        words: &str,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        match self.kind() {
            Kind::Enrollment => {
                self.set_enrollment(EnrollmentState::Undeliverable, Channel::Bounce, detail, now)?
            }
            Kind::ProviderAuthorization => self.set_authorization(
                AuthorizationState::Undeliverable,
                Channel::Bounce,
                detail,
                now,
            )?,
            Kind::CustomerInvitation => {
                self.set_customer(CustomerState::Undeliverable, Channel::Bounce, detail, now)?
            }
        }
        Ok(Effects::notice(words))
    }

    /// The record's TTL passed while it was still waiting; an enrollment's contact hears it.
    pub fn expire(&mut self, now: Timestamp) -> Result<Effects, Refusal> {
        let detail = "time to live passed";
        match self.kind() {
            Kind::Enrollment => {
                self.set_enrollment(EnrollmentState::Expired, Channel::Timer, detail, now)?;
                Ok(Effects::status())
            }
            Kind::ProviderAuthorization => {
                self.set_authorization(AuthorizationState::Expired, Channel::Timer, detail, now)?;
                Ok(Effects::default())
            }
            Kind::CustomerInvitation => {
                self.set_customer(CustomerState::Expired, Channel::Timer, detail, now)?;
                Ok(Effects::default())
            }
        }
    }

    /// The contact confirmed their address: the enrollment goes to review; they hear it.
    pub fn verify_contact(&mut self, channel: Channel, now: Timestamp) -> Result<Effects, Refusal> {
        let detail = format!("contact verified{}", via(channel));
        self.set_enrollment(EnrollmentState::InReview, channel, &detail, now)?;
        Ok(Effects::status())
    }

    /// The contact accepted the partner agreement: the enrollment is active; they hear it. (The
    /// invitations waiting for this address are renewed by [`Record::renew_for_enrollment`].)
    pub fn accept_agreement(
        &mut self,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        let detail = format!("partner agreement accepted{}", via(channel));
        self.set_enrollment(EnrollmentState::Active, channel, &detail, now)?;
        Ok(Effects::status())
    }

    /// Staff approved an enrollment in review: the agreement link goes out, valid until
    /// `expires_at`.
    pub fn approve(
        &mut self,
        channel: Channel,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        self.set_enrollment(EnrollmentState::Approved, channel, "approved", now)?;
        self.expires_at = Some(expires_at);
        Ok(Effects::mail(Mail::Link { reminder: false }))
    }

    /// Staff rejected an enrollment in review; the contact hears the reason.
    pub fn reject(
        &mut self,
        reason: &str,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        self.set_enrollment(EnrollmentState::Rejected, channel, reason, now)?;
        Ok(Effects::mail(Mail::Status {
            note: reason.to_string(),
        }))
    }

    /// An invitation still waiting for an address whose enrollment just became active: linked to
    /// it, with a fresh link (and its timers) valid until `expires_at`. None if it is not waiting.
    pub fn renew_for_enrollment(
        &mut self,
        enrollment: RecordId,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Option<Effects> {
        match &mut self.body {
            Body::ProviderAuthorization(a) if a.state == AuthorizationState::Invited => {
                a.enrollment = Some(enrollment);
            }
            _ => return None,
        }
        self.renew_link(
            expires_at,
            "enrollment active: invitation re-sent with a fresh link",
            Channel::Timer,
            now,
        );
        Some(Effects {
            mails: vec![Mail::Link { reminder: false }],
            link_timers: true,
            expire_at: None,
        })
    }

    /// Staff resent the record's link: a fresh one valid until `expires_at` (every older link
    /// dies), mailed, with its timers.
    pub fn resend(&mut self, expires_at: Timestamp, channel: Channel, now: Timestamp) -> Effects {
        self.renew_link(
            expires_at,
            "re-sent with a fresh link; older links no longer work",
            channel,
            now,
        );
        Effects {
            mails: vec![Mail::Link { reminder: false }],
            link_timers: true,
            expire_at: None,
        }
    }

    /// Staff revoked a provider authorization or a customer invitation (its links die). An
    /// authorization's waiting customer invitations go with it (`App::revoke_pending_customers`).
    pub fn revoke(&mut self, channel: Channel, now: Timestamp) -> Result<Effects, Refusal> {
        match self.kind() {
            Kind::ProviderAuthorization => {
                self.set_authorization(AuthorizationState::Revoked, channel, "revoked", now)?
            }
            Kind::CustomerInvitation => {
                self.set_customer(CustomerState::Revoked, channel, "revoked", now)?
            }
            Kind::Enrollment => return Err(self.refuse("be revoked (an enrollment is rejected)")),
        }
        Ok(Effects::default())
    }

    /// The reseller authorized the provider, with its active enrollment; the provider hears it.
    pub fn authorize(
        &mut self,
        enrollment: RecordId,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        let detail = format!("provider authorized{}", via(channel));
        self.set_authorization(AuthorizationState::Authorized, channel, &detail, now)?;
        if let Body::ProviderAuthorization(a) = &mut self.body {
            a.enrollment = Some(enrollment);
        }
        Ok(Effects::notice(""))
    }

    /// The recipient declined an invitation (a provider's: the provider hears it; a customer
    /// invitation: nobody is mailed).
    pub fn decline(&mut self, channel: Channel, now: Timestamp) -> Result<Effects, Refusal> {
        let detail = format!("declined{}", via(channel));
        match self.kind() {
            Kind::ProviderAuthorization => {
                self.set_authorization(AuthorizationState::Declined, channel, &detail, now)?;
                Ok(Effects::notice(""))
            }
            Kind::CustomerInvitation => {
                self.set_customer(CustomerState::Declined, channel, &detail, now)?;
                Ok(Effects::default())
            }
            Kind::Enrollment => Err(self.refuse("decline (an enrollment is not declined)")),
        }
    }

    /// The customer accepted (the caller checked the provider is still authorized).
    pub fn accept_customer(
        &mut self,
        channel: Channel,
        now: Timestamp,
    ) -> Result<Effects, Refusal> {
        let detail = format!(
            "customer accepted{}: reseller-customer and provider-customer relationships created",
            via(channel)
        );
        self.set_customer(CustomerState::Accepted, channel, &detail, now)?;
        Ok(Effects::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
    }

    fn auth() -> Record {
        Record::new(
            Body::ProviderAuthorization(ProviderAuthorization {
                state: AuthorizationState::Invited,
                provider: "p".into(),
                email: Email::parse("a@b.test").unwrap_or_else(|e| panic!("{e}")),
                company: "C".into(),
                country: "KR".into(),
                contact_name: String::new(),
                admin_access: true,
                enrollment: None,
            }),
            "en-US",
            Channel::Cli,
            "invited",
            now(),
        )
    }

    /// What each transition causes is the model's to say: the state, the history entry, the
    /// mails and timers. A refused one changes nothing.
    #[test]
    fn transitions_say_their_effects() {
        let mut a = auth();
        let e = a
            .decline(Channel::Link, now())
            .unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(a.state_str(), "declined");
        let last = a
            .history
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("history"));
        assert_eq!(
            (last.from.as_str(), last.to.as_str()),
            ("invited", "declined")
        );
        assert_eq!(last.detail, "declined by link");
        assert_eq!(
            e.mails,
            vec![Mail::ProviderNotice {
                words: String::new()
            }]
        );
        // a second decline is refused and leaves the record as it was
        let before = a.history.len();
        assert!(a.decline(Channel::Reply, now()).is_err());
        assert_eq!(a.history.len(), before);

        let mut b = auth();
        let until = now() + chrono::Duration::days(14);
        let e = b.resend(until, Channel::Cli, now());
        assert_eq!((b.generation, b.expires_at), (1, Some(until)));
        assert!(e.link_timers);
        assert_eq!(e.mails, vec![Mail::Link { reminder: false }]);
        let e = b.remind(now());
        assert!(b.reminded);
        assert_eq!(e.mails, vec![Mail::Link { reminder: true }]);
        let e = b.bounce("hard bounce: 550", "550 no such user", now());
        assert_eq!(b.state_str(), "undeliverable");
        assert_eq!(
            e.map(|e| e.mails),
            Ok(vec![Mail::ProviderNotice {
                words: "550 no such user".into()
            }])
        );
        assert!(b
            .authorize(RecordId([1; 16]), Channel::Link, now())
            .is_err());

        let mut c = auth();
        let e = c.authorize(RecordId([2; 16]), Channel::Reply, now());
        assert!(e.is_ok());
        assert_eq!(
            c.authorization().and_then(|x| x.enrollment),
            Some(RecordId([2; 16]))
        );
        assert_eq!(
            c.history.last().map(|t| t.detail.as_str()),
            Some("provider authorized by reply")
        );
        assert!(c.revoke(Channel::Cli, now()).is_ok());
        assert_eq!((c.state_str(), c.generation), ("revoked", 1));
    }

    #[test]
    fn new_ids_lead_with_their_time_and_still_differ() {
        let t = now();
        let (a, b) = (RecordId::new(t), RecordId::new(t));
        assert_ne!(a, b, "80 random bits each");
        assert_eq!(a.0[..6], b.0[..6]);
        let later = RecordId::new(t + chrono::Duration::milliseconds(1));
        assert!(later.0[..6] > a.0[..6]);
        assert_eq!(RecordId::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn ids_round_trip_in_both_forms() {
        let id = RecordId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 26);
        assert_eq!(RecordId::parse(&s), Some(id));
        let hex = data_encoding::HEXLOWER.encode(&id.0);
        assert_eq!(RecordId::parse(&hex), Some(id));
        assert_eq!(RecordId::parse("not-an-id"), None);
    }

    #[test]
    fn email_validation_table() {
        let good = [
            "a@b.test",
            "Minji.Kim@Fabrikam.TEST",
            "x+y@sub.example.co.kr",
        ];
        for g in good {
            assert!(Email::parse(g).is_ok(), "{g}");
        }
        assert_eq!(
            Email::parse("Minji.Kim@Fabrikam.TEST").map(|e| e.to_string()),
            Ok("minji.kim@fabrikam.test".to_string())
        );
        let long_local = format!("{}@b.test", "a".repeat(65));
        let bad = [
            "",
            "nobody",
            "a@b",
            "a@@b.test",
            "a b@c.test",
            "a@b.test\r\nBcc: x@y.test",
            "a@-b.test",
            ".a@b.test",
            "a..b@c.test",
            long_local.as_str(),
            "a@b_c.test",
        ];
        for b in bad {
            assert!(Email::parse(b).is_err(), "{b:?} should be refused");
        }
    }

    #[test]
    fn authorization_transitions_table() {
        use AuthorizationState::*;
        let cases = [
            (Invited, Authorized, true),
            (Invited, Declined, true),
            (Invited, Expired, true),
            (Invited, Undeliverable, true),
            (Invited, Revoked, true),
            (Authorized, Revoked, true),
            (Authorized, Declined, false),
            (Declined, Authorized, false),
            (Expired, Authorized, false),
            (Revoked, Authorized, false),
        ];
        for (from, to, ok) in cases {
            let mut r = auth();
            if let Body::ProviderAuthorization(a) = &mut r.body {
                a.state = from;
            }
            let res = r.set_authorization(to, Channel::Cli, "", now());
            assert_eq!(res.is_ok(), ok, "{from:?} -> {to:?}");
            let expected = if ok { to } else { from };
            assert_eq!(r.state_str(), expected.as_str());
        }
    }

    #[test]
    fn enrollment_transitions_table() {
        use EnrollmentState::*;
        let all = [
            PendingVerification,
            InReview,
            Approved,
            Active,
            Rejected,
            Expired,
            Undeliverable,
        ];
        let allowed = [
            (PendingVerification, InReview),
            (InReview, Approved),
            (Approved, Active),
            (InReview, Rejected),
            (PendingVerification, Expired),
            (PendingVerification, Undeliverable),
            (Approved, Undeliverable),
        ];
        for from in all {
            for to in all {
                let mut r = auth();
                r.body = Body::Enrollment(Enrollment {
                    state: from,
                    company: "C".into(),
                    country: "KR".into(),
                    address: Address {
                        street: "s".into(),
                        city: "c".into(),
                        postal_code: "1".into(),
                    },
                    primary_contact: Contact {
                        name: "n".into(),
                        email: Email::parse("a@b.test").unwrap_or_else(|e| panic!("{e}")),
                        phone: "1".into(),
                    },
                    support: Support {
                        email: Email::parse("s@b.test").unwrap_or_else(|e| panic!("{e}")),
                        phone: "1".into(),
                        website: None,
                    },
                    mpn: Mpn {
                        id: "1".into(),
                        country: "KR".into(),
                    },
                });
                let ok = r.set_enrollment(to, Channel::Cli, "", now()).is_ok();
                assert_eq!(ok, allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn history_records_each_transition() {
        let mut r = auth();
        assert!(r
            .set_authorization(AuthorizationState::Authorized, Channel::Link, "ok", now())
            .is_ok());
        assert!(r.remove_admin_access(Channel::Cli, now()).is_ok());
        assert!(r.remove_admin_access(Channel::Cli, now()).is_err());
        let h: Vec<(String, String)> = r
            .history
            .iter()
            .map(|t| (t.from.clone(), t.to.clone()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("".into(), "invited".into()),
                ("invited".into(), "authorized".into()),
                ("authorized".into(), "authorized".into())
            ]
        );
        assert_eq!(r.awaiting(), None);
    }
}
