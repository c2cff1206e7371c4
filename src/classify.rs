//! Inbound mail classification: turns one raw message into an [`Inbound`] — its refs, its
//! Authentication-Results and whether it is a bounce, an automatic reply, a keyword command or
//! something for a human. Pure: no I/O, no store, no clock; the daemon decides what to do with it.
//!
//! Every message is hostile until proven otherwise, so the work per message is bounded and
//! linear in its size: messages over [`MAX_MESSAGE_BYTES`] are not parsed (only their header, by
//! [`classify_too_large`]); MIME structures that make the parser go quadratic are refused before
//! parsing; at most [`MAX_REFS`] refs and [`MAX_TEXT_BYTES`] of body text are looked at; and every
//! string made for people (`from`, `subject`, reasons, diagnostics) is clipped with its control
//! characters escaped (`crate::text`). Only `message_id` stays exact: it is the outcome's key.

use mail_parser::decoders::html::add_html_token;
use mail_parser::{
    Address, HeaderName, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

use crate::text::escape_controls;

/// Larger messages are not parsed at all (no reply or bounce we care about is this big); Postfix's
/// default `message_size_limit` is about the same.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Of a message over [`MAX_MESSAGE_BYTES`], the sources read at most this much (its header).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Refs kept per message. A real reply or bounce carries a handful (plus address, In-Reply-To,
/// the root of References, the returned Message-ID); an attacker's 100,000 are cut here.
pub const MAX_REFS: usize = 16;
/// Body text looked at: the own line of a reply, a notice's words, refs in a bounce's text.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// mail-parser 0.11 scans from each multipart part to the end of the message for a boundary that
/// never comes (again for every such part) and compares the boundary at every "--": a message
/// may mention only this many boundaries (real ones have under ten), each RFC 2046-short.
const MAX_MIME_BOUNDARIES: usize = 32;
const MAX_BOUNDARY_CHARS: usize = 200;
/// Authentication-Results headers kept, topmost first (ours is the topmost, or close to it).
const MAX_AUTH_RESULTS: usize = 16;
/// Addresses kept from a bounce (recipients of a DSN, addresses in a notice's own text).
const MAX_BOUNCE_ADDRESSES: usize = 64;
/// Subjects are matched against automatic-reply and failure phrases in this prefix only.
const MAX_SUBJECT_BYTES: usize = 4096;
/// Reasons and diagnostics are for people and logs; keep them short.
const MAX_DETAIL_CHARS: usize = 300;
/// The reason of an unsubscribe request (see [`Inbound::unsubscribe_request`]).
const UNSUBSCRIBE_REQUEST: &str = "unsubscribe request";
/// Our refs: 26 lowercase base32 characters.
const REF_LEN: usize = 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Yes,
    No,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// permanent = true for a failure (Action: failed / 5.x.x / failure notice), false for a
    /// delay (Action: delayed, 4.x.x) which must change no record. `diagnostic` is the remote
    /// system's words (status and diagnostic code, or the notice's SMTP line), clipped and
    /// escaped; `report` says whom the bounce is about.
    Bounce {
        permanent: bool,
        diagnostic: String,
        report: BounceReport,
    },
    AutoReply {
        reason: String,
    },
    Command {
        keyword: Keyword,
    },
    Unrecognised {
        reason: String,
    },
}

/// Whom a bounce is about. Anyone can send a mail that looks like a bounce to our plus address,
/// so a bounce counts for a record only if it names the record's recipient here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BounceReport {
    /// A delivery-status report (RFC 3464): every address named by a per-recipient block's
    /// Final-Recipient / Original-Recipient, with that block's status.
    Dsn(Vec<RecipientStatus>),
    /// A failure notice without a usable DSN (qmail, Exim, Gmail …): the addresses its own
    /// words name — X-Failed-Recipients and its text up to the returned copy of the message.
    Notice(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// lowercase, without the address type ("rfc822;") and angle brackets
    pub address: String,
    pub permanent: bool,
    /// the reporting server's words for this recipient, clipped and escaped
    pub diagnostic: String,
}

impl Classification {
    /// For a bounce that names `recipient` (a lowercase address): whether it failed for good,
    /// and the remote server's words. None when this is not a bounce about that recipient.
    pub fn bounce_about(&self, recipient: &str) -> Option<(bool, &str)> {
        let Classification::Bounce {
            permanent,
            diagnostic,
            report,
        } = self
        else {
            return None;
        };
        match report {
            BounceReport::Dsn(statuses) => statuses
                .iter()
                .filter(|s| s.address == recipient)
                .max_by_key(|s| s.permanent)
                .map(|s| (s.permanent, s.diagnostic.as_str())),
            BounceReport::Notice(addresses) => addresses
                .iter()
                .any(|a| a == recipient)
                .then_some((*permanent, diagnostic.as_str())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Inbound {
    /// bare, without <>, exactly as sent (the key of the outcome; escape it before printing)
    pub message_id: Option<String>,
    /// the address of the (one) From mailbox, control characters escaped
    pub from: Option<String>,
    /// clipped, control characters escaped
    pub subject: String,
    /// Refs, in order: plus addresses `<reply_local>+<ref>@…` in To, Cc, Delivered-To,
    /// X-Original-To, Envelope-To; local parts of the ids in In-Reply-To and References; for
    /// bounces, the Message-ID of the returned original (or, without one, any `<…@…>` id or plus
    /// address in the body text). Only 26-char base32 strings are kept, lowercased, deduplicated,
    /// at most [`MAX_REFS`].
    pub refs: Vec<String>,
    /// values of the first [`MAX_AUTH_RESULTS`] Authentication-Results headers, topmost first
    pub authentication_results: Vec<String>,
    /// Marked automatic by its headers (Auto-Submitted not "no", X-Autoreply, Precedence …) or
    /// classified as an auto reply.
    pub auto_submitted: bool,
    /// An unsubscribe request (Subject "unsubscribe", as the `List-Unsubscribe` mailto asks, or
    /// `X-Apple-Unsubscribe`): classified `Unrecognised`; the daemon acts on it if it matches an
    /// invitation and comes from its recipient.
    pub unsubscribe_request: bool,
    pub classification: Classification,
}

/// Never panics (mail-parser runs under `catch_unwind`); input over [`MAX_MESSAGE_BYTES`],
/// unparsable, or with a MIME structure the parser cannot take in linear time → `Unrecognised`
/// with a reason (with what the header alone says: Message-ID, From, refs).
pub fn classify(raw: &[u8], reply_local: &str) -> Inbound {
    if raw.len() > MAX_MESSAGE_BYTES {
        return classify_too_large(raw, raw.len() as u64, reply_local);
    }
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    if let Some(reason) = mime_limits(raw) {
        return header_only(raw, reply_local, reason);
    }
    match std::panic::catch_unwind(|| classify_unguarded(raw, reply_local)) {
        Ok(Some(inbound)) => inbound,
        Ok(None) => header_only(
            raw,
            reply_local,
            "unparsable: no message headers found".into(),
        ),
        Err(_) => header_only(
            raw,
            reply_local,
            "unparsable: the mail parser panicked".into(),
        ),
    }
}

/// A message of `size` bytes, over [`MAX_MESSAGE_BYTES`], of which the source read only `head`
/// (its first bytes, or its header section): always `Unrecognised`, reason "too large …", with
/// the Message-ID, From and refs its header gives. Reads at most [`MAX_HEAD_BYTES`] of `head`.
pub fn classify_too_large(head: &[u8], size: u64, reply_local: &str) -> Inbound {
    let reason =
        format!("too large ({size} bytes, limit {MAX_MESSAGE_BYTES}); only its header was read");
    header_only(head, reply_local, reason)
}

/// RFC 8601: the topmost Authentication-Results whose authserv-id is `trusted_authserv_id`
/// decides. Headers from anyone else are ignored, since any hop before our MX can add them. It
/// passes only if it has a dmarc result and every dmarc result in it is `pass` with
/// `header.from` equal to `from_domain`, the domain of the From address the daemon acts on: a
/// pass for some other domain (a second From, a display trick) proves nothing about this one.
pub fn dmarc_pass(
    authentication_results: &[String],
    trusted_authserv_id: &str,
    from_domain: &str,
) -> bool {
    let trusted = authentication_results
        .iter()
        .map(|v| strip_comments(v))
        .find(|v| {
            // The authserv-id may be followed by a version number ("mx.invited.test 1;").
            let id = v
                .split(';')
                .next()
                .and_then(|p| p.split_whitespace().next());
            id.is_some_and(|id| id.eq_ignore_ascii_case(trusted_authserv_id))
        });
    let Some(trusted) = trusted else {
        return false;
    };
    let same_domain = |d: &str| {
        let d = d.trim_matches('"');
        let d = d.rsplit_once('@').map_or(d, |(_, d)| d);
        let (d, ours) = (d.trim_end_matches('.'), from_domain.trim_end_matches('.'));
        !ours.is_empty() && d.eq_ignore_ascii_case(ours)
    };
    let verdicts: Vec<bool> = trusted
        .split(';')
        .skip(1)
        .filter_map(|resinfo| {
            let mut words = resinfo.split_whitespace();
            let (method, result) = words.next()?.split_once('=')?;
            // A method may carry a version too ("dmarc/1").
            let method = method.split('/').next().unwrap_or_default();
            if !method.eq_ignore_ascii_case("dmarc") {
                return None;
            }
            let header_from = words
                .filter_map(|w| w.split_once('='))
                .find(|(p, _)| p.eq_ignore_ascii_case("header.from"))
                .map(|(_, d)| d);
            Some(result.eq_ignore_ascii_case("pass") && header_from.is_some_and(same_domain))
        })
        .collect();
    !verdicts.is_empty() && verdicts.iter().all(|ok| *ok)
}

/// The first unquoted, non-empty line of a reply body and the keyword it starts with, if any.
pub fn command_keyword(body_text: &str) -> Option<Keyword> {
    first_own_line(body_text).and_then(line_keyword)
}

fn unrecognised(reason: impl AsRef<str>) -> Classification {
    Classification::Unrecognised {
        reason: clip(reason.as_ref()),
    }
}

// ---------------------------------------------------------------------------------------------
// Whole message

fn classify_unguarded(raw: &[u8], reply_local: &str) -> Option<Inbound> {
    let msg = MessageParser::default().parse(raw)?;
    let headers = Headers::of(&msg);
    if headers.0.is_empty() {
        return None;
    }
    let HeaderFacts {
        message_id,
        from,
        from_problem,
        subject,
        mut refs,
        authentication_results,
    } = HeaderFacts::of(&msg, &headers, reply_local);
    let raw_subject = prefix(msg.subject().unwrap_or_default(), MAX_SUBJECT_BYTES);
    let header_auto = auto_header_reason(&headers);

    let content_type = msg
        .content_type()
        .filter(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
    let report_type = content_type
        .and_then(|ct| ct.attribute("report-type"))
        .unwrap_or_default();
    let report_type = report_type.to_ascii_lowercase();

    let classification = if let Some(problem) = from_problem {
        // Nothing may act for a message without one author.
        unrecognised(problem)
    } else if let Some(bounce) = bounce(&msg, &headers, raw_subject, &report_type) {
        bounce_refs(&msg, reply_local, &mut refs);
        bounce
    } else if report_type == "feedback-report" || has_part(&msg, "message", "feedback-report") {
        unrecognised("abuse feedback report (ARF)")
    } else if headers.first("x-apple-unsubscribe").is_some()
        || raw_subject.trim().eq_ignore_ascii_case("unsubscribe")
    {
        // Someone (or their mail client for them) wants out: the daemon acts on it for an
        // invitation; anything else is for a human to see.
        unrecognised(UNSUBSCRIBE_REQUEST)
    } else if let Some(reason) = header_auto
        .clone()
        .or_else(|| (report_type == "disposition-notification").then(|| "read receipt".into()))
        .or_else(|| auto_subject(raw_subject).then(|| format!("automatic subject: {raw_subject}")))
    {
        Classification::AutoReply {
            reason: clip(&reason),
        }
    } else {
        let body = reply_body(&msg).unwrap_or_default();
        match (first_own_line(&body), command_keyword(&body)) {
            (_, Some(keyword)) => Classification::Command { keyword },
            (Some(line), None) => unrecognised(format!("first line is not a keyword: {line}")),
            (None, None) => unrecognised("no own text (empty, or only quoted text)"),
        }
    };

    Some(Inbound {
        message_id,
        from,
        subject,
        refs: refs.0,
        authentication_results,
        auto_submitted: header_auto.is_some()
            || matches!(classification, Classification::AutoReply { .. }),
        unsubscribe_request: matches!(
            &classification,
            Classification::Unrecognised { reason } if reason == UNSUBSCRIBE_REQUEST
        ),
        classification,
    })
}

/// For a message that is not parsed whole: what its header section says (at most
/// [`MAX_HEAD_BYTES`] of it), and `Unrecognised { reason }`.
fn header_only(raw: &[u8], reply_local: &str, reason: String) -> Inbound {
    let head = header_section(raw);
    let facts = std::panic::catch_unwind(|| {
        let msg = MessageParser::default().parse_headers(head)?;
        let headers = Headers::of(&msg);
        Some(HeaderFacts::of(&msg, &headers, reply_local))
    });
    let facts = facts.ok().flatten().unwrap_or_default();
    Inbound {
        message_id: facts.message_id,
        from: facts.from,
        subject: facts.subject,
        refs: facts.refs.0,
        authentication_results: facts.authentication_results,
        auto_submitted: false,
        unsubscribe_request: false,
        classification: unrecognised(reason),
    }
}

/// The header section at the start of `raw`, cut at [`MAX_HEAD_BYTES`] (then without the
/// partial last line, so a cut Message-ID is not mistaken for a whole one).
fn header_section(raw: &[u8]) -> &[u8] {
    let head = &raw[..raw.len().min(MAX_HEAD_BYTES)];
    let blank_line = head
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .find(|(i, _)| matches!(head.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..])));
    match blank_line {
        Some((i, _)) => &head[..=i],
        None if head.len() == raw.len() => head,
        None => head
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(&[][..], |i| &head[..=i]),
    }
}

/// Why mail-parser must not see this message, if it must not: too many MIME boundaries, or
/// one too long (see [`MAX_MIME_BOUNDARIES`]). Counts every "boundary" (any case) in the raw
/// bytes, parameters and text alike — cheap, and a real message has a few.
fn mime_limits(raw: &[u8]) -> Option<String> {
    const WORD: &[u8] = b"boundary";
    let mut count = 0;
    let mut at = 0;
    while let Some(pos) = raw
        .get(at..)?
        .windows(WORD.len())
        .position(|w| w.eq_ignore_ascii_case(WORD))
    {
        count += 1;
        if count > MAX_MIME_BOUNDARIES {
            return Some(format!(
                "more than {MAX_MIME_BOUNDARIES} MIME boundaries; not parsed"
            ));
        }
        at += pos + WORD.len();
        // boundary[*n*] = ["]value["]
        let rest = &raw[at..];
        let rest = &rest[rest
            .iter()
            .position(|b| !matches!(b, b'*' | b'0'..=b'9' | b' ' | b'\t'))
            .unwrap_or(rest.len())..];
        let Some(value) = rest.strip_prefix(b"=") else {
            continue;
        };
        let value = value.trim_ascii_start();
        let (value, stop): (&[u8], &[u8]) = match value.strip_prefix(b"\"") {
            Some(quoted) => (quoted, b"\"\r\n"),
            None => (value, b"; \t\r\n"),
        };
        let len = value
            .iter()
            .take(MAX_BOUNDARY_CHARS + 1)
            .take_while(|b| !stop.contains(b))
            .count();
        if len > MAX_BOUNDARY_CHARS {
            return Some(format!(
                "a MIME boundary longer than {MAX_BOUNDARY_CHARS} characters; not parsed"
            ));
        }
    }
    None
}

/// What the header section says, for people (escaped) and for matching (refs, results).
#[derive(Default)]
struct HeaderFacts {
    message_id: Option<String>,
    from: Option<String>,
    /// why this message has no single author, if it has not
    from_problem: Option<&'static str>,
    subject: String,
    refs: Refs,
    authentication_results: Vec<String>,
}

impl HeaderFacts {
    fn of(msg: &Message<'_>, headers: &Headers, reply_local: &str) -> HeaderFacts {
        let mut refs = Refs::default();
        for name in ["to", "cc", "delivered-to", "x-original-to", "envelope-to"] {
            headers
                .all(name)
                .for_each(|value| refs.plus_addresses(value, reply_local));
        }
        for value in headers.all("in-reply-to").chain(headers.all("references")) {
            let ids = value.split(|c: char| c == '<' || c == '>' || c == ',' || c.is_whitespace());
            for (local, _) in ids.filter_map(|id| id.split_once('@')) {
                if refs.full() {
                    break;
                }
                refs.push(local);
            }
        }
        // mail-parser answers `from()` with the last From header; RFC 5322 allows exactly one.
        let froms: Vec<&Address<'_>> = msg
            .headers()
            .iter()
            .filter(|h| h.name == HeaderName::From)
            .filter_map(|h| h.value.as_address())
            .collect();
        let from_problem = if headers.all("from").nth(1).is_some() {
            Some("more than one From header: no single author")
        } else if froms.first().is_some_and(|a| a.iter().nth(1).is_some()) {
            Some("the From header names more than one mailbox: no single author")
        } else {
            None
        };
        let from = froms
            .first()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(escape_controls);
        HeaderFacts {
            message_id: msg.message_id().map(str::to_string),
            from,
            from_problem,
            subject: clip(msg.subject().unwrap_or_default()),
            refs,
            authentication_results: headers
                .all("authentication-results")
                .take(MAX_AUTH_RESULTS)
                .map(String::from)
                .collect(),
        }
    }
}

/// Top-level headers as (lowercased name, unfolded raw value), in message order. Raw, because
/// mail-parser reshapes some values (Authentication-Results must stay verbatim).
struct Headers(Vec<(String, String)>);

impl Headers {
    fn of(msg: &Message<'_>) -> Headers {
        let headers = msg.headers().iter().filter_map(|h| {
            let bytes = msg
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)?;
            let value = String::from_utf8_lossy(bytes);
            let mut unfolded = String::with_capacity(value.len());
            for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !unfolded.is_empty() {
                    unfolded.push(' ');
                }
                unfolded.push_str(line);
            }
            Some((h.name.as_str().to_ascii_lowercase(), unfolded))
        });
        Headers(headers.collect())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn first<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name).next()
    }
}

/// Deduplicated refs in the order found, at most [`MAX_REFS`] (so `contains` stays cheap and a
/// message cannot make us look up thousands).
#[derive(Default)]
struct Refs(Vec<String>);

impl Refs {
    fn full(&self) -> bool {
        self.0.len() >= MAX_REFS
    }

    fn push(&mut self, candidate: &str) {
        let candidate = candidate.trim();
        let base32 = |b: u8| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b);
        if self.full() || candidate.len() != REF_LEN || !candidate.bytes().all(base32) {
            return;
        }
        let candidate = candidate.to_ascii_lowercase();
        if !self.0.contains(&candidate) {
            self.0.push(candidate);
        }
    }

    /// Every `<reply_local>+<ref>@` in `text` (case-insensitive, not inside a longer local
    /// part). One pass: after each `<reply_local>+` only the next 27 bytes are looked at.
    fn plus_addresses(&mut self, text: &str, reply_local: &str) {
        if reply_local.is_empty() {
            return;
        }
        // ASCII lowercasing keeps byte offsets, so slicing `lower` stays on char boundaries.
        let lower = text.to_ascii_lowercase();
        let needle = format!("{}+", reply_local.to_ascii_lowercase());
        let mut from = 0;
        while let Some(pos) = lower.get(from..).and_then(|t| t.find(&needle)) {
            if self.full() {
                return;
            }
            let before = lower[..from + pos].chars().next_back();
            from += pos + needle.len();
            let boundary =
                before.is_none_or(|c| !(c.is_ascii_alphanumeric() || "._-+".contains(c)));
            let candidate = lower.as_bytes().get(from..from + REF_LEN + 1);
            if let (true, Some([r @ .., b'@'])) = (boundary, candidate) {
                // all ASCII when it is a ref; `push` checks the alphabet
                self.push(std::str::from_utf8(r).unwrap_or_default());
            }
        }
    }
}

fn has_part(msg: &Message<'_>, ctype: &str, subtype: &str) -> bool {
    msg.parts.iter().any(|p| p.is_content_type(ctype, subtype))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text of a leaf part (at most [`MAX_TEXT_BYTES`]); mail-parser gives non-text parts
/// (message/delivery-status) as bytes.
fn part_text(part: &MessagePart<'_>) -> Option<String> {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => Some(prefix(t, MAX_TEXT_BYTES).to_string()),
        PartType::Binary(b) | PartType::InlineBinary(b) => {
            Some(String::from_utf8_lossy(&b[..b.len().min(MAX_TEXT_BYTES)]).into_owned())
        }
        _ => None,
    }
}

/// The text parts of the message itself (not of attached messages) that `keep` accepts,
/// HTML as text, joined, at most [`MAX_TEXT_BYTES`] in all.
fn body_texts(msg: &Message<'_>, keep: impl Fn(&MessagePart<'_>) -> bool) -> String {
    let mut out = String::new();
    for part in msg.parts.iter().filter(|p| keep(p)) {
        let room = MAX_TEXT_BYTES.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        match &part.body {
            PartType::Text(t) => out.push_str(prefix(t, room)),
            PartType::Html(h) => out.push_str(prefix(&html_to_text(prefix(h, room)), room)),
            _ => continue,
        }
        out.push('\n');
    }
    out
}

/// Whitespace runs collapsed to one space, at most [`MAX_DETAIL_CHARS`] characters (then "…"),
/// control characters escaped. Reads no more of `text` than it keeps (bar its first word).
fn clip(text: &str) -> String {
    let mut chars = text
        .split_whitespace()
        .enumerate()
        .flat_map(|(i, word)| (i > 0).then_some(' ').into_iter().chain(word.chars()));
    let mut out: String = chars.by_ref().take(MAX_DETAIL_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    escape_controls(&out)
}

// ---------------------------------------------------------------------------------------------
// Bounces

fn bounce(msg: &Message<'_>, h: &Headers, subject: &str, report: &str) -> Option<Classification> {
    let status_part = |p: &&MessagePart<'_>| {
        p.is_content_type("message", "delivery-status")
            || p.is_content_type("message", "global-delivery-status")
    };
    if matches!(report, "delivery-status" | "global-delivery-status")
        || msg.parts.iter().any(|p| status_part(&p))
    {
        let mut parts = msg.parts.iter().filter(status_part);
        let status = parts.find_map(|p| delivery_status(&part_text(p)?));
        // A report whose status part says nothing usable is judged like a plain notice.
        return Some(status.unwrap_or_else(|| notice(msg, h, subject)));
    }
    is_failure_notice(msg, h, subject).then(|| notice(msg, h, subject))
}

/// Reads a message/delivery-status part (RFC 3464): the per-message fields, then one block per
/// recipient, blocks separated by blank lines.
fn delivery_status(text: &str) -> Option<Classification> {
    let blocks = field_blocks(text);
    let fields = || blocks.iter().flatten();
    let values = |name: &'static str| {
        fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (mut actions, mut statuses) = (values("action"), values("status"));
    let failed = actions
        .clone()
        .any(|a| a.to_ascii_lowercase().starts_with("failed"))
        || statuses.clone().any(|s| s.starts_with('5'));
    if actions.next().is_none() && statuses.next().is_none() {
        return None;
    }
    let words = |fields: &mut dyn Iterator<Item = &(String, String)>| {
        let (mut status, mut code) = (None, None);
        for (name, value) in fields {
            if name.eq_ignore_ascii_case("status") && !value.starts_with('2') {
                status = status.or(Some(value.as_str()));
            } else if name.eq_ignore_ascii_case("diagnostic-code") {
                code = code.or(Some(diagnostic_text(value)));
            }
        }
        clip(
            &[status, code]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    let mut statuses = Vec::new();
    for block in &blocks {
        let named = |n: &str| {
            [
                "final-recipient",
                "original-recipient",
                "x-actual-recipient",
            ]
            .iter()
            .any(|r| n.eq_ignore_ascii_case(r))
        };
        let addresses = block.iter().filter(|(n, _)| named(n));
        let permanent = block.iter().any(|(n, v)| {
            (n.eq_ignore_ascii_case("action") && v.to_ascii_lowercase().starts_with("failed"))
                || (n.eq_ignore_ascii_case("status") && v.starts_with('5'))
        });
        let diagnostic = words(&mut block.iter());
        for (_, value) in addresses {
            if statuses.len() >= MAX_BOUNCE_ADDRESSES {
                break;
            }
            // "rfc822; <a@b.test>" (the type may be missing, or "utf-8" in a global DSN)
            let address = value.rsplit_once(';').map_or(value.as_str(), |(_, a)| a);
            let address = address.trim().trim_matches(['<', '>']).to_lowercase();
            if !address.is_empty() {
                statuses.push(RecipientStatus {
                    address,
                    permanent,
                    diagnostic: diagnostic.clone(),
                });
            }
        }
    }
    Some(Classification::Bounce {
        permanent: failed,
        diagnostic: words(&mut fields()),
        report: BounceReport::Dsn(statuses),
    })
}

/// "smtp; 550 5.1.1 <a@b>: no such user" → "550 5.1.1 <a@b>: no such user": the words after the
/// diagnostic type are what the remote server said.
fn diagnostic_text(value: &str) -> &str {
    match value.split_once(';') {
        Some((kind, text))
            if !kind.is_empty()
                && kind
                    .trim()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            text.trim()
        }
        _ => value,
    }
}

/// "Name: value" fields of a header-like block, folded lines joined, grouped by blank lines.
fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let Some(block) = blocks.last_mut() else {
            break;
        };
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    blocks
}

#[rustfmt::skip]
const FAILURE_SUBJECTS: &[&str] = &[
    "undeliver", "delivery status notification", "delivery failure", "delivery failed",
    "delivery has failed", "failure notice", "returned mail", "returned to sender",
    "could not be delivered", "not delivered", "non-deliverable", "nondeliverable", "non remis",
    "unzustellbar", "delivery notification", "delayed mail", "delivery delayed",
    "mail system error", "delivery problem", "could not send message",
];

/// Failure notices without a DSN (qmail, Exim, Gmail, …): sent by the mail system, not a person.
fn is_failure_notice(msg: &Message<'_>, headers: &Headers, subject: &str) -> bool {
    let from = headers.first("from").unwrap_or_default();
    let from = prefix(from, MAX_SUBJECT_BYTES).to_ascii_lowercase();
    let address = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let local = address.split('@').next().unwrap_or_default();
    let daemon = matches!(local, "mailer-daemon" | "mailer_daemon" | "mailerdaemon")
        || ["mail delivery", "mailer-daemon", "mailer daemon"]
            .iter()
            .any(|s| from.contains(s));
    let null_sender = headers.first("return-path").is_some_and(|rp| {
        rp.trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace())
            .is_empty()
    });
    let lower_subject = subject.to_lowercase();
    let failure_subject = FAILURE_SUBJECTS.iter().any(|p| lower_subject.contains(p));
    let returned_part = msg.parts.iter().any(|p| {
        matches!(p.body, PartType::Message(_)) || p.is_content_type("text", "rfc822-headers")
    });
    // A postmaster mailbox may belong to a person who really answers, so it needs more evidence;
    // a null sender returning a message (KDDI's "Subject: Mail") is evidence enough.
    daemon
        || (local == "postmaster" && (null_sender || failure_subject || returned_part))
        || (null_sender && (failure_subject || returned_part))
}

/// A failure notice without a usable DSN part: permanent unless its subject says "delayed";
/// about the addresses its own words name.
fn notice(msg: &Message<'_>, headers: &Headers, subject: &str) -> Classification {
    let s = subject.to_lowercase();
    let delayed = s.contains("delay") || s.starts_with("warning:") || s.contains("being retried");
    let text = own_text(msg);
    // The first line with a 4xx/5xx SMTP reply code says most about why.
    let smtp_line = text.lines().map(str::trim).find(|line| {
        line.split_whitespace().any(|w| {
            let code = w.as_bytes().get(..3).unwrap_or_default();
            matches!(code, [b'4' | b'5', b'0'..=b'9', b'0'..=b'9'])
                && !w.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
        })
    });
    let mut addresses = Vec::new();
    for failed in headers.all("x-failed-recipients") {
        addresses_in(failed, &mut addresses);
    }
    addresses_in(&text, &mut addresses);
    Classification::Bounce {
        permanent: !delayed,
        diagnostic: clip(smtp_line.unwrap_or(subject)),
        report: BounceReport::Notice(addresses),
    }
}

/// A notice's own words: its inline text parts (not attached messages, returned headers or
/// attachments), up to the line where an inline copy of the returned message starts.
fn own_text(msg: &Message<'_>) -> String {
    let mut text = body_texts(msg, |p| {
        !p.is_content_type("text", "rfc822-headers")
            && !p.content_disposition().is_some_and(|d| d.is_attachment())
    });
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if returned_copy_starts(line) {
            break;
        }
        offset += line.len();
    }
    text.truncate(offset);
    text
}

#[rustfmt::skip]
const RETURNED_COPY_MARKERS: &[&str] = &[
    "copy of the message", "copy of your message", "original message", "returned message",
    "message follows", "original headers", "undelivered message", "headers of the original",
    "message headers follow", "below this line is a copy", "message text follows",
    "text of the message", "unsent message",
];

/// "------ This is a copy of the message, including all the headers. ------" (Exim), "--- Below
/// this line is a copy of the message." (qmail), "----- Original message -----" (Gmail), or the
/// returned headers themselves.
fn returned_copy_starts(line: &str) -> bool {
    let line = line.trim();
    let lower = prefix(line, 200).to_ascii_lowercase();
    let rule = line.starts_with("--") || line.starts_with("==") || line.starts_with("__");
    (rule && RETURNED_COPY_MARKERS.iter().any(|m| lower.contains(m)))
        || lower.starts_with("return-path:")
        || lower.starts_with("received:")
}

/// Adds every address-shaped `local@domain.tld` in `text` (lowercase, deduplicated) to `out`,
/// up to [`MAX_BOUNCE_ADDRESSES`]. Looks at most 64 bytes left and 255 right of each '@'.
fn addresses_in(text: &str, out: &mut Vec<String>) {
    let b = text.as_bytes();
    let local_char = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain_char = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'.';
    for (at, _) in text.match_indices('@') {
        if out.len() >= MAX_BOUNCE_ADDRESSES {
            return;
        }
        let mut start = at;
        while start > 0 && at - start < 64 && local_char(b[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && end - at <= 255 && domain_char(b[end]) {
            end += 1;
        }
        // only ASCII was stepped over, so both ends are char boundaries
        let local = text[start..at].trim_start_matches('.');
        let domain = text[at + 1..end].trim_end_matches(['.', '-']);
        if local.is_empty() || !domain.contains('.') {
            continue;
        }
        let address = format!("{local}@{domain}").to_ascii_lowercase();
        if !out.contains(&address) {
            out.push(address);
        }
    }
}

/// Refs of the returned original: its Message-ID, or failing that any id/plus address in the
/// text (at most [`MAX_TEXT_BYTES`] of it).
fn bounce_refs(msg: &Message<'_>, reply_local: &str, refs: &mut Refs) {
    let before = refs.0.len();
    let local = |id: Option<&str>| id.unwrap_or_default().split('@').next().map(str::to_string);
    for part in &msg.parts {
        if refs.full() {
            return;
        }
        let id = match &part.body {
            PartType::Message(original) => local(original.message_id()),
            _ if part.is_content_type("text", "rfc822-headers") => {
                let text = part_text(part).unwrap_or_default();
                let original = MessageParser::default().parse_headers(text.as_bytes());
                original.and_then(|o| local(o.message_id()))
            }
            _ => None,
        };
        refs.push(&id.unwrap_or_default());
    }
    if refs.0.len() > before {
        return;
    }
    let text = body_texts(msg, |_| true);
    refs.plus_addresses(&text, reply_local);
    for chunk in text.split('<').skip(1) {
        if refs.full() {
            return;
        }
        let id = chunk.split_once('>').and_then(|(id, _)| id.split_once('@'));
        id.into_iter().for_each(|(local, _)| refs.push(local));
    }
}

// ---------------------------------------------------------------------------------------------
// Automatic replies

fn auto_header_reason(headers: &Headers) -> Option<String> {
    if let Some(v) = headers.first("auto-submitted") {
        let token = v.split([';', '(', ' ']).next().unwrap_or_default();
        if !token.is_empty() && !token.eq_ignore_ascii_case("no") {
            return Some(format!("Auto-Submitted: {v}"));
        }
    }
    let names = [
        "x-autoreply",
        "x-autorespond",
        "x-autoresponder",
        "x-mail-autoreply",
    ];
    let off = |v: &str| v.eq_ignore_ascii_case("no") || v.eq_ignore_ascii_case("false");
    if let Some(name) = names
        .into_iter()
        .find(|n| headers.first(n).is_some_and(|v| !off(v)))
    {
        return Some(format!("{name} header"));
    }
    // X-Auto-Response-Suppress is deliberately not here: Outlook puts it on ordinary mail too.
    let precedence = headers
        .first("precedence")
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(precedence.as_str(), "bulk" | "junk" | "list" | "auto_reply")
        .then(|| format!("Precedence: {precedence}"))
}

#[rustfmt::skip]
const AUTO_SUBJECTS: &[&str] = &[
    "out of office", "out of the office", "automatic reply", "auto reply", "auto-reply",
    "autoreply", "auto response", "auto-response", "autoresponse", "automatic response",
    "vacation", "on holiday", "on leave", "away from the office", "abwesenheit",
    "réponse automatique", "respuesta automática", "자동 응답", "자동응답", "부재중", "부재 중", "휴가",
];

fn auto_subject(subject: &str) -> bool {
    let s = subject.trim().to_lowercase();
    s.starts_with("auto:")
        || s.starts_with("autosvar")
        || AUTO_SUBJECTS.iter().any(|p| s.contains(p))
}

// ---------------------------------------------------------------------------------------------
// Reply text and keywords

/// The reply's own text: the first text/plain body, else the first HTML body as text; its
/// first [`MAX_TEXT_BYTES`] (the keyword line comes first, or after a short quote).
fn reply_body(msg: &Message<'_>) -> Option<String> {
    let mut parts = msg
        .text_body
        .iter()
        .chain(&msg.html_body)
        .filter_map(|&id| msg.parts.get(id as usize));
    parts.find_map(|p| match &p.body {
        PartType::Text(t) => Some(prefix(t, MAX_TEXT_BYTES).to_string()),
        PartType::Html(h) => Some(html_to_text(prefix(h, MAX_TEXT_BYTES))),
        _ => None,
    })
}

/// First non-empty line that is not quoted, or None when a separator or signature comes first.
fn first_own_line(body: &str) -> Option<&str> {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    // Whitespace (NBSP included) and the invisible characters mail clients leave behind.
    let invisible = |c: char| {
        c.is_whitespace() || matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}')
    };
    let mut lines = body
        .lines()
        .map(|l| l.trim_matches(invisible))
        .filter(|l| !l.is_empty());
    let line = lines.by_ref().find(|l| !l.starts_with('>'))?;
    let next = lines.next().unwrap_or_default();
    (!is_separator(line, next)).then_some(line)
}

/// Attribution lines, quote headers and the signature separator: the reply's own text ends here.
fn is_separator(line: &str, next: &str) -> bool {
    let lower = line.to_lowercase();
    let attribution = |l: &str| {
        let ends = [
            "wrote:",
            "a écrit :",
            "a écrit:",
            "schrieb:",
            "escribió:",
            "작성:",
        ];
        ends.iter().any(|e| l.ends_with(e)) || l.contains("님이 작성")
    };
    let starts = [
        "-----",
        "_____",
        "from:",
        "보낸 사람:",
        "보낸사람:",
        "begin forwarded message",
    ];
    line == "--"
        || starts.iter().any(|s| lower.starts_with(s))
        || attribution(&lower)
        // Gmail wraps a long "On … wrote:" (or the Korean "… 님이 작성:") over two lines.
        || ((lower.starts_with("on ") || line.starts_with(|c: char| c.is_ascii_digit()))
            && attribution(&next.to_lowercase()))
}

fn line_keyword(line: &str) -> Option<Keyword> {
    let line = line.trim_start_matches(['*', '_', '"', '\'', '“', '‘']);
    let (word, rest) = line.split_at(
        line.find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(line.len()),
    );
    if !word.is_empty() {
        // Latin keywords must be whole words: "Yesterday" is not YES.
        if rest.starts_with(char::is_alphanumeric) {
            return None;
        }
        // "No problem" / "No worries" usually mean yes: leave them for a human.
        let next = rest.trim_start_matches([' ', ',']).to_ascii_lowercase();
        let not_a_no = starts_with_any(&next, &["problem", "worries"]);
        return match word.to_ascii_lowercase().as_str() {
            "yes" | "confirm" | "accept" | "authorize" | "authorise" | "approve" => {
                Some(Keyword::Yes)
            }
            "no" if not_a_no => None,
            "no" | "decline" => Some(Keyword::No),
            _ => None,
        };
    }
    if starts_with_any(line, &["아니요", "아니오", "거절"]) {
        return Some(Keyword::No);
    }
    // One-syllable 예/네 must stand alone ("네트워크", "예정" are other words); the longer ones
    // are prefixes of their verb forms ("확인했습니다", "동의합니다").
    let hangul = |c: char| ('\u{ac00}'..='\u{d7a3}').contains(&c);
    let single = ["예", "네"]
        .iter()
        .any(|k| line.strip_prefix(k).is_some_and(|r| !r.starts_with(hangul)));
    if !(single || starts_with_any(line, &["확인", "동의", "승인"])) {
        return None;
    }
    // Korean puts negation and requests after the verb ("동의하지 않습니다", "확인 부탁드립니다"):
    // such a line is not a yes, so a human looks at it.
    let hedged = [
        "않",
        "못",
        "불가",
        "거절",
        "거부",
        "아니",
        "부탁",
        "주세요",
        "주시",
        "?",
    ];
    (!hedged.iter().any(|h| line.contains(h))).then_some(Keyword::Yes)
}

fn starts_with_any(text: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| text.starts_with(p))
}

/// HTML to lines of text; text inside <blockquote> comes out '>'-quoted and <hr> as a separator
/// line, so the plain-text rules above apply unchanged.
fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let (mut line, mut quoted, mut depth) = (String::new(), false, 0usize);
    let mut skip_until: Option<&str> = None; // inside <style>, <script>, <head> or <title>
    let mut flush = |line: &mut String, quoted: &mut bool| {
        if std::mem::take(quoted) {
            out.push_str("> ");
        }
        out.push_str(&line.split_whitespace().collect::<Vec<_>>().join(" "));
        out.push('\n');
        line.clear();
    };
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let Some(tag) = rest.strip_prefix('<') else {
            let end = rest.find('<').unwrap_or(rest.len());
            if skip_until.is_none() {
                line.push_str(&decode_entities(&rest[..end]));
                quoted |= depth > 0;
            }
            rest = &rest[end..];
            continue;
        };
        let end = tag.find('>').unwrap_or(tag.len());
        rest = tag.get(end + 1..).unwrap_or_default();
        let closing = tag.starts_with('/');
        let name = tag.trim_start_matches('/');
        let name = name[..name
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(name.len())]
            .to_ascii_lowercase();
        if let Some(until) = skip_until {
            skip_until = skip_until.filter(|_| !(closing && name == until));
            continue;
        }
        match name.as_str() {
            "style" | "script" | "head" | "title" if !closing => {
                skip_until = ["style", "script", "head", "title"]
                    .into_iter()
                    .find(|n| *n == name);
            }
            "blockquote" => {
                flush(&mut line, &mut quoted);
                depth = if closing {
                    depth.saturating_sub(1)
                } else {
                    depth + 1
                };
            }
            "hr" => {
                flush(&mut line, &mut quoted);
                line.push_str("________________________________");
                flush(&mut line, &mut quoted);
            }
            "br" | "p" | "div" | "tr" | "li" | "ul" | "ol" | "table" | "pre" | "h1" | "h2"
            | "h3" | "h4" | "h5" | "h6" => flush(&mut line, &mut quoted),
            _ => {}
        }
    }
    flush(&mut line, &mut quoted);
    out
}

/// Decodes character references ("&amp;", "&#33;", "&nbsp;" …); anything else stays as it is.
fn decode_entities(text: &str) -> String {
    let mut parts = text.split('&');
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        match part.split_once(';').filter(|(name, _)| name.len() < 32) {
            Some((name, rest)) => {
                // mail-parser knows every HTML5 entity name; unknown ones are copied verbatim.
                add_html_token(&mut out, format!("&{name};").as_bytes(), false);
                out.push_str(rest);
            }
            None => {
                out.push('&');
                out.push_str(part);
            }
        }
    }
    out
}

/// Removes RFC 5322 comments "( … )", nested ones included, so they cannot fake a result.
fn strip_comments(value: &str) -> String {
    let mut depth = 0usize;
    let keep = |c: &char| {
        let was = depth;
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        was == 0 && depth == 0
    };
    value.chars().filter(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[rustfmt::skip]
    fn keyword_lines() {
        let (yes, no) = (Some(Keyword::Yes), Some(Keyword::No));
        let cases: &[(&str, Option<Keyword>)] = &[
            ("YES", yes), ("yes", yes), ("Yes, please.", yes), ("Confirm.", yes), ("*Yes*", yes),
            ("ACCEPT - thanks", yes), ("Authorise", yes), ("Approve\r\n\r\nDaniel", yes),
            ("No thanks", no), ("DECLINE", no), ("No Problem, go ahead", None),
            ("Yesterday I sent it", None), ("Nobody here", None), ("Approved", None),
            ("Can you call me? Yes or no?", None), ("", None),
            ("네, 동의합니다", yes), ("네", yes), ("예.", yes), ("확인했습니다", yes),
            ("동의합니다.", yes), ("승인합니다", yes), ("아니요, 괜찮습니다", no), ("아니오", no),
            ("거절합니다", no), ("네트워크 문제로 늦었습니다", None), ("예정대로 진행해 주세요", None),
            ("확인 부탁드립니다", None), ("동의하지 않습니다", None),
            ("\u{feff}Yes", yes), ("\u{a0}\n \t\n\u{200b}\nYes", yes), ("> quoted\n\nNo.", no),
            ("\n> YES\n> Reply YES to confirm\n", None), ("-- \nMinji Kim\n\nYES", None),
            ("Yes\n-- \nsig", yes), ("-----Original Message-----\nYES", None),
            ("On Tue, Nov 24, 2026 at 2:05 PM Contoso <\npartners@invited.test> wrote:\n> YES", None),
            ("2026년 11월 24일 (화) 오후 2:05, Contoso <p@invited.test>님이 작성:\n> 네", None),
            ("________________________________\nFrom: Contoso\nYES", None),
            ("From: Contoso <partners@invited.test>\nSent: today\n\nYES", None),
            ("보낸 사람: Contoso\nYES", None),
        ];
        for (body, want) in cases {
            assert_eq!(command_keyword(body), *want, "{body:?}");
        }
    }

    #[test]
    fn dmarc_from_trusted_topmost_only_for_the_from_domain() {
        let ours = "mx.invited.test";
        let check = |v: &[&str], domain: &str| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            dmarc_pass(&v, ours, domain)
        };
        let pass =
            "mx.invited.test; dkim=pass header.d=f.test; dmarc=pass (p=none) header.from=f.test";
        let fail = "mx.invited.test; dkim=none; dmarc=fail (p=none) header.from=f.test";
        assert!(check(&[pass], "f.test"));
        assert!(check(&[pass], "F.Test"));
        assert!(check(
            &["MX.Invited.Test 1; DMARC=PASS header.from=F.TEST"],
            "f.test"
        ));
        assert!(check(&["mx.other.test; dmarc=fail", pass], "f.test"));
        assert!(!check(&[fail, pass], "f.test"));
        assert!(!check(
            &["mx.other.test; dmarc=pass header.from=f.test"],
            "f.test"
        ));
        assert!(!check(
            &["mx.invited.test; spf=pass (dmarc=pass header.from=f.test) smtp.mailfrom=x"],
            "f.test"
        ));
        assert!(!check(
            &["mx.invited.test; dmarc=passed header.from=f.test"],
            "f.test"
        ));
        assert!(!check(
            &["mx.invited.test.evil.test; dmarc=pass header.from=f.test"],
            "f.test"
        ));
        assert!(!check(&[], "f.test"));
        // the pass must be for the domain of the From the daemon acts on
        assert!(!check(&[pass], "customer.test"));
        assert!(
            !check(&["mx.invited.test; dmarc=pass"], "f.test"),
            "no header.from"
        );
        assert!(!check(
            &["mx.invited.test; dmarc=pass (header.from=f.test)"],
            "f.test"
        ));
        assert!(!check(&[pass], ""));
        assert!(!check(
            &["mx.invited.test; dmarc=pass header.from=sub.f.test"],
            "f.test"
        ));
        // one result per From domain: a second, failing one (or one for another domain) spoils it
        assert!(!check(
            &["mx.invited.test; dmarc=pass header.from=f.test; dmarc=fail header.from=f.test"],
            "f.test"
        ));
        assert!(!check(
            &["mx.invited.test; dmarc=pass header.from=f.test; dmarc=pass header.from=e.test"],
            "f.test"
        ));
        assert!(check(
            &["mx.invited.test; dmarc=pass header.from=\"f.test\""],
            "f.test"
        ));
    }

    #[test]
    fn refs_are_base32_and_plus_addresses_need_a_boundary() {
        let mut refs = Refs::default();
        refs.push("ABCDEFGHIJKLMNOPQRSTUVWXYZ"); // kept, lowercased
        refs.push("abcdefghijklmnopqrstuvwxyz"); // duplicate
        refs.push("abcdefghijklmnopqrstuvwxy0"); // 0 is not base32
        refs.push("abcdefghijklmnopqrstuvwxy"); // 25 chars
        let to = "x-replies+aaaaaaaaaaaaaaaaaaaaaaaaaa@i.test, <Replies+BBBBBBBBBBBBBBBBBBBBBB2345@i.test>";
        refs.plus_addresses(to, "replies");
        assert_eq!(
            refs.0,
            ["abcdefghijklmnopqrstuvwxyz", "bbbbbbbbbbbbbbbbbbbbbb2345"]
        );
    }

    #[test]
    fn html_quotes_blockquotes_and_decodes_entities() {
        let text = html_to_text(
            "<html><head><style>p{}</style></head><body><div>Yes&nbsp;&amp; thanks&#33; &x;</div>\
             <blockquote>Reply<br>YES</blockquote><hr><p>From: x</p><!-- c --></body></html>",
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let rule = "________________________________";
        assert_eq!(
            lines,
            ["Yes & thanks! &x;", "> Reply", "> YES", rule, "From: x"]
        );
        let quoted_only = html_to_text("<p>&gt; No</p><blockquote>YES</blockquote>");
        assert_eq!(command_keyword(&quoted_only), None);
    }

    #[test]
    fn whole_messages() {
        let msg = |h: &str, body: &str| classify(format!("{h}\n\n{body}").as_bytes(), "replies");
        let unrecognised =
            |i: Inbound| matches!(i.classification, Classification::Unrecognised { .. });
        assert!(unrecognised(classify(
            &vec![b'a'; MAX_MESSAGE_BYTES + 1],
            "replies"
        )));
        assert!(unrecognised(classify(b"", "replies")));

        let (r1, r2) = ("aaaaaaaaaaaaaaaaaaaaaaaaa2", "bbbbbbbbbbbbbbbbbbbbbbbbb3");
        let headers = format!(
            "From: A <a@f.test>\nTo: replies+{r1}@invited.test\nIn-Reply-To: <{r2}@invited.test>\n\
             References: <x@y> <{r1}@invited.test>\nX-Auto-Response-Suppress: All\n\
             Subject: Re: hi\nMessage-ID: <m1@f.test>"
        );
        let reply = msg(&headers, "Yes\n");
        assert_eq!(
            reply.classification,
            Classification::Command {
                keyword: Keyword::Yes
            }
        );
        assert_eq!(reply.refs, [r1, r2]);
        assert_eq!(reply.message_id.as_deref(), Some("m1@f.test"));
        assert_eq!(reply.from.as_deref(), Some("a@f.test"));
        assert!(!reply.auto_submitted);

        let ooo = msg(
            "From: a@f.test\nSubject: Out of Office: hi\nAuto-Submitted: no",
            "Yes",
        );
        assert!(matches!(
            ooo.classification,
            Classification::AutoReply { .. }
        ));
        assert!(ooo.auto_submitted);

        let dsn = msg(
            "From: MAILER-DAEMON@f.test\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=b",
            "--b\nContent-Type: text/plain\n\nlate\n--b\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; f.test\n\nAction: delayed\nStatus: 4.4.1\n--b--\n",
        );
        assert!(matches!(
            dsn.classification,
            Classification::Bounce {
                permanent: false,
                ..
            }
        ));
    }

    fn msg(h: &str, body: &str) -> Inbound {
        classify(format!("{h}\n\n{body}").as_bytes(), "replies")
    }

    fn reason(i: &Inbound) -> &str {
        match &i.classification {
            Classification::Unrecognised { reason } => reason,
            other => panic!("not unrecognised: {other:?}"),
        }
    }

    #[test]
    fn a_message_without_one_author_is_unrecognised() {
        let auth = "Authentication-Results: mx.invited.test; dmarc=pass header.from=attacker.test";
        let two = msg(
            &format!("{auth}\nFrom: eve@attacker.test\nFrom: contact@customer.test\nSubject: Re"),
            "AUTHORIZE",
        );
        assert!(
            reason(&two).contains("more than one From header"),
            "{two:?}"
        );
        // what is shown is the first From, whatever mail-parser would act on
        assert_eq!(two.from.as_deref(), Some("eve@attacker.test"));
        let list = msg(
            "From: Contact <contact@customer.test>, Eve <eve@attacker.test>\nSubject: Re",
            "AUTHORIZE",
        );
        assert!(reason(&list).contains("more than one mailbox"), "{list:?}");
        let group = msg(
            "From: team: a@customer.test, b@customer.test;\nSubject: Re",
            "Yes",
        );
        assert!(
            reason(&group).contains("more than one mailbox"),
            "{group:?}"
        );
        let one = msg(
            "From: Contact <contact@customer.test>\nSubject: Re",
            "AUTHORIZE",
        );
        assert!(matches!(one.classification, Classification::Command { .. }));
    }

    #[test]
    fn delivery_reports_say_whom_they_are_about() {
        let dsn = msg(
            "From: MAILER-DAEMON@f.test\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=b",
            "--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; f.test\n\n\
             Final-Recipient: rfc822; <Ana@F.test>\nAction: failed\nStatus: 5.1.1\n\
             Diagnostic-Code: smtp; 550 5.1.1 <ana@f.test>: no such\n  user here\n\n\
             Original-Recipient: rfc822;bo@f.test\nFinal-Recipient: rfc822;bo@g.test\n\
             Action: delayed\nStatus: 4.4.1\n--b--\n",
        );
        let Classification::Bounce {
            permanent, report, ..
        } = &dsn.classification
        else {
            panic!("{dsn:?}")
        };
        assert!(*permanent);
        let BounceReport::Dsn(statuses) = report else {
            panic!("{report:?}")
        };
        let named: Vec<(&str, bool)> = statuses
            .iter()
            .map(|s| (s.address.as_str(), s.permanent))
            .collect();
        assert_eq!(
            named,
            [
                ("ana@f.test", true),
                ("bo@f.test", false),
                ("bo@g.test", false)
            ]
        );
        let about = |r: &str| dsn.classification.bounce_about(r);
        assert_eq!(
            about("ana@f.test"),
            Some((true, "5.1.1 550 5.1.1 <ana@f.test>: no such user here"))
        );
        assert_eq!(about("bo@g.test"), Some((false, "4.4.1")));
        assert_eq!(about("eve@f.test"), None);
    }

    #[test]
    fn failure_notices_count_the_addresses_of_their_own_words_only() {
        let headers = "From: Mail Delivery System <Mailer-Daemon@mx.f.test>\n\
                       Subject: Mail delivery failed: returning message to sender";
        let returned = "------ This is a copy of the message, including all the headers. ------\n\
                        \nFrom: partners@invited.test\nTo: Kate <kate@customer.test>\n\
                        Message-ID: <aaaaaaaaaaaaaaaaaaaaaaaaa2@invited.test>\n\nHello";
        let notice = |failed: &str| {
            msg(
                headers,
                &format!(
                    "A message that you sent could not be delivered. The following address(es) failed:\n\n  \
                     {failed}\n    550 5.2.2 mailbox full\n\n{returned}\n"
                ),
            )
        };
        let theirs = notice("other@f.test");
        assert_eq!(theirs.refs, ["aaaaaaaaaaaaaaaaaaaaaaaaa2"]);
        assert_eq!(
            theirs.classification.bounce_about("kate@customer.test"),
            None
        );
        assert_eq!(
            theirs.classification.bounce_about("other@f.test"),
            Some((true, "550 5.2.2 mailbox full"))
        );
        let ours = notice("Kate@Customer.test");
        assert_eq!(
            ours.classification.bounce_about("kate@customer.test"),
            Some((true, "550 5.2.2 mailbox full"))
        );
        // Exim names them in a header too
        let header_only = msg(
            &format!("{headers}\nX-Failed-Recipients: kate@customer.test"),
            "Your message could not be delivered.",
        );
        assert!(header_only
            .classification
            .bounce_about("kate@customer.test")
            .is_some());
        // and a bare "MAILER-DAEMON" mail names nobody
        let forged = msg(headers, "Your message could not be delivered.\n550 5.1.1");
        assert_eq!(
            forged.classification.bounce_about("kate@customer.test"),
            None
        );
    }

    #[test]
    fn text_for_people_has_its_control_characters_escaped() {
        let m = msg(
            "From: \u{1b}[1mEve\u{1b}[0m <eve\u{1b}[31m@attacker.test>\n\
             Subject: \u{1b}[1mHi \u{202e}gpj.exe\nMessage-ID: <id\u{1b}[0m@attacker.test>",
            "\u{1b}[2J\u{9b}31mcall me",
        );
        assert_eq!(
            m.message_id.as_deref(),
            Some("id\u{1b}[0m@attacker.test"),
            "exact"
        );
        assert_eq!(m.subject, "\\u{1b}[1mHi \\u{202e}gpj.exe");
        assert_eq!(
            reason(&m),
            "first line is not a keyword: \\u{1b}[2J\\u{9b}31mcall me"
        );
        assert_eq!(m.from.as_deref(), Some("eve\\u{1b}[31m@attacker.test"));
        let bounce = msg(
            "From: MAILER-DAEMON@f.test\nSubject: failure notice",
            "kate@customer.test:\n550 5.1.1 \u{1b}[31mno\u{7} such user",
        );
        let Classification::Bounce { diagnostic, .. } = &bounce.classification else {
            panic!("{bounce:?}")
        };
        assert_eq!(diagnostic, "550 5.1.1 \\u{1b}[31mno\\u{7} such user");
    }

    #[test]
    fn clip_reads_only_what_it_keeps() {
        let long = format!("{} tail", "word ".repeat(1_000_000));
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_DETAIL_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("  a\t\nb  "), "a b");
        assert_eq!(
            clip(&"x".repeat(MAX_DETAIL_CHARS)),
            "x".repeat(MAX_DETAIL_CHARS)
        );
    }

    #[test]
    fn oversize_messages_are_known_by_their_header_alone() {
        let r = "aaaaaaaaaaaaaaaaaaaaaaaaa2";
        let head = format!(
            "From: a@f.test\nTo: replies+{r}@invited.test\nMessage-ID: <big@f.test>\n\nYes\n"
        );
        let mut raw = head.clone().into_bytes();
        raw.resize(MAX_MESSAGE_BYTES + 1, b'x');
        let big = classify(&raw, "replies");
        assert!(reason(&big).starts_with("too large ("), "{big:?}");
        assert_eq!(big.message_id.as_deref(), Some("big@f.test"));
        assert_eq!(big.from.as_deref(), Some("a@f.test"));
        assert_eq!(big.refs, [r]);
        let from_head = classify_too_large(head.as_bytes(), 20 << 20, "replies");
        assert!(
            reason(&from_head).contains("20971520 bytes"),
            "{from_head:?}"
        );
        assert_eq!(from_head.message_id.as_deref(), Some("big@f.test"));
        // a head cut inside a header drops that header rather than keep a piece of it
        let cut = format!(
            "From: a@f.test\n{}Message-ID: <cut",
            "X-Pad: p\n".repeat(8000)
        );
        let cut = classify_too_large(&cut.as_bytes()[..MAX_HEAD_BYTES], 20 << 20, "replies");
        assert_eq!(cut.message_id, None);
        assert_eq!(cut.from.as_deref(), Some("a@f.test"));
    }

    #[test]
    fn mime_the_parser_cannot_take_in_linear_time_is_not_parsed() {
        let head = "From: a@f.test\nMessage-ID: <mime@f.test>\n\
                    Content-Type: multipart/mixed; boundary=b";
        let parts: String = (0..40)
            .map(|i| format!("--b\nContent-Type: multipart/mixed; boundary=\"never-{i}\"\n\nx\n"))
            .collect();
        let many = msg(head, &format!("{parts}--b--\n"));
        assert!(reason(&many).contains("MIME boundaries"), "{many:?}");
        assert_eq!(many.message_id.as_deref(), Some("mime@f.test"));
        let long = msg(
            &format!(
                "From: a@f.test\nContent-Type: multipart/mixed; boundary*0=\"{}\"",
                "-".repeat(500)
            ),
            "x",
        );
        assert!(reason(&long).contains("MIME boundary longer"), "{long:?}");
        // a few boundaries, and the word in the text, are fine
        let fine = msg(
            "From: a@f.test\nContent-Type: multipart/alternative; boundary=\"b1\"",
            "--b1\nContent-Type: text/plain\n\nYes, the boundary is fine\n--b1--\n",
        );
        assert!(matches!(
            fine.classification,
            Classification::Command { .. }
        ));
    }

    #[test]
    fn refs_stop_at_the_cap() {
        let ids: String = (0..100)
            .map(|i| {
                format!(
                    " <{}@invited.test>",
                    format!("{i:0>26}")
                        .replace('0', "a")
                        .replace('1', "b")
                        .replace('8', "c")
                        .replace('9', "d")
                )
            })
            .collect();
        let m = msg(&format!("From: a@f.test\nReferences:{ids}"), "Yes");
        assert_eq!(m.refs.len(), MAX_REFS);
        let mut refs = Refs::default();
        let far = format!(
            "replies+{}  @x.test replies+{}@x.test",
            "b".repeat(26),
            "c".repeat(26)
        );
        refs.plus_addresses(&far, "replies");
        assert_eq!(refs.0, ["c".repeat(26)]);
    }

    #[test]
    fn unsubscribe_requests_are_flagged_and_nothing_else_is() {
        let r = "aaaaaaaaaaaaaaaaaaaaaaaaa2";
        let msg = |h: &str, body: &str| {
            classify(
                format!("From: <kim@f.test>\nTo: replies+{r}@invited.test\nMessage-ID: <u@f.test>\n{h}\n\n{body}").as_bytes(),
                "replies",
            )
        };
        let flagged = |i: &Inbound| {
            i.unsubscribe_request
                && matches!(&i.classification, Classification::Unrecognised { reason } if reason == "unsubscribe request")
        };
        // what a List-Unsubscribe mailto button sends, in any case, also marked automatic
        for h in [
            "Subject: unsubscribe",
            "Subject:  UNSUBSCRIBE ",
            "Subject: unsubscribe\nAuto-Submitted: auto-generated",
            "Subject: Re: hello\nX-Apple-Unsubscribe: true",
        ] {
            let m = msg(h, "This message was automatically generated by Gmail.");
            assert!(flagged(&m), "{h}: {m:?}");
            assert_eq!(m.refs, [r], "{h}");
        }
        // a reply that mentions it, a keyword reply, a bounce about it: not a request
        for (h, body) in [
            ("Subject: Re: unsubscribe", "YES"),
            ("Subject: how do I unsubscribe?", "please tell me"),
            ("Subject: Re: hello", "unsubscribe"),
        ] {
            assert!(!msg(h, body).unsubscribe_request, "{h} / {body}");
        }
        let two_from = classify(
            format!("From: <a@f.test>, <b@f.test>\nTo: replies+{r}@invited.test\nSubject: unsubscribe\n\nx").as_bytes(),
            "replies",
        );
        assert!(
            !two_from.unsubscribe_request,
            "no single author: not acted on"
        );
        let oversize = classify_too_large(
            b"From: <kim@f.test>\nSubject: unsubscribe\n\n",
            11 << 20,
            "replies",
        );
        assert!(!oversize.unsubscribe_request);
    }

    /// Found by the fuzzer (`fuzz/`, target `inbound`, bench/fuzz): mail-parser 0.11.9 panics
    /// ("Invalid part ID, could not find multipart", parsers/message.rs:485) on a multipart whose
    /// message/rfc822 part holds another message/rfc822 header and then the closing boundary.
    /// The panic stays inside `classify`: unrecognised, with what the header alone says.
    #[test]
    fn a_message_the_parser_panics_on_is_unrecognised_from_its_header() {
        let r = "aaaaaaaaaaaaaaaaaaaaaaaaa2";
        let raw = format!(
            "From: <kim@f.test>\nTo: replies+{r}@invited.test\nMessage-ID: <panic@f.test>\n\
             Content-Type: multipart/repatus;\n\tboundary=\"q9RDCuol017809.1351343576/mta.example.jp\n\
             0900\n\n--q9RDCuol017809.1351343576/mta.example.jp\nContent-Type: message/rfc822\n\n\
             R3exap\nContent-Type: message/rfc822\n\nn\n\n--q9RDCuol017809.1351343576/mta.example.jp--"
        );
        let parsed =
            std::panic::catch_unwind(|| MessageParser::default().parse(raw.as_bytes()).map(|_| ()));
        assert!(
            parsed.is_err(),
            "mail-parser still panics on it (else drop this note)"
        );
        let m = classify(raw.as_bytes(), "replies");
        assert_eq!(reason(&m), "unparsable: the mail parser panicked", "{m:?}");
        assert_eq!(m.message_id.as_deref(), Some("panic@f.test"));
        assert_eq!(m.from.as_deref(), Some("kim@f.test"));
        assert_eq!(m.refs, [r]);
    }
}
