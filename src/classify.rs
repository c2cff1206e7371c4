//! Inbound mail classification: turns one raw message into an [`Inbound`] — its refs, its
//! Authentication-Results and whether it is a bounce, an automatic reply, a keyword command or
//! something for a human. Pure: no I/O, no store, no clock; the daemon decides what to do with it.

use mail_parser::decoders::html::add_html_token;
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Larger messages are not parsed at all (no reply or bounce we care about is this big).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Reasons and diagnostics are for people and logs; keep them short.
const MAX_DETAIL_CHARS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Yes,
    No,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// permanent = true for a failure (Action: failed / 5.x.x / failure notice), false for a
    /// delay (Action: delayed, 4.x.x) which must change no record
    Bounce {
        permanent: bool,
        diagnostic: String,
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

#[derive(Debug, Clone)]
pub struct Inbound {
    /// bare, without <>
    pub message_id: Option<String>,
    /// the From address only, as written
    pub from: Option<String>,
    pub subject: String,
    /// Refs, in order: plus addresses `<reply_local>+<ref>@…` in To, Cc, Delivered-To,
    /// X-Original-To, Envelope-To; local parts of the ids in In-Reply-To and References; for
    /// bounces, the Message-ID of the returned original (or, without one, any `<…@…>` id or plus
    /// address in the body text). Only 26-char base32 strings are kept, lowercased, deduplicated.
    pub refs: Vec<String>,
    /// values of every Authentication-Results header, topmost first
    pub authentication_results: Vec<String>,
    /// Marked automatic by its headers (Auto-Submitted not "no", X-Autoreply, Precedence …) or
    /// classified as an auto reply.
    pub auto_submitted: bool,
    pub classification: Classification,
}

/// Never panics (mail-parser runs under `catch_unwind`); input over [`MAX_MESSAGE_BYTES`] or
/// unparsable → `Unrecognised` with a reason.
pub fn classify(raw: &[u8], reply_local: &str) -> Inbound {
    let unparsed = |reason: String| Inbound {
        message_id: None,
        from: None,
        subject: String::new(),
        refs: Vec::new(),
        authentication_results: Vec::new(),
        auto_submitted: false,
        classification: unrecognised(reason),
    };
    if raw.len() > MAX_MESSAGE_BYTES {
        let limit = MAX_MESSAGE_BYTES;
        return unparsed(format!(
            "message too large ({} bytes, limit {limit})",
            raw.len()
        ));
    }
    match std::panic::catch_unwind(|| classify_unguarded(raw, reply_local)) {
        Ok(Some(inbound)) => inbound,
        Ok(None) => unparsed("unparsable: no message headers found".into()),
        Err(_) => unparsed("unparsable: the mail parser panicked".into()),
    }
}

/// RFC 8601: the topmost Authentication-Results whose authserv-id is `trusted_authserv_id`
/// decides; true only if it carries `dmarc=pass`. Headers from anyone else are ignored, since
/// any hop before our MX can add them.
pub fn dmarc_pass(authentication_results: &[String], trusted_authserv_id: &str) -> bool {
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
    trusted.is_some_and(|v| {
        v.split(';').skip(1).any(|resinfo| {
            let method_result = resinfo.split_whitespace().next().unwrap_or_default();
            let (method, result) = method_result.split_once('=').unwrap_or_default();
            // A method may carry a version too ("dmarc/1").
            let method = method.split('/').next().unwrap_or_default();
            method.eq_ignore_ascii_case("dmarc") && result.eq_ignore_ascii_case("pass")
        })
    })
}

/// The first unquoted, non-empty line of a reply body and the keyword it starts with, if any.
pub fn command_keyword(body_text: &str) -> Option<Keyword> {
    first_own_line(body_text).and_then(line_keyword)
}

fn unrecognised(reason: impl Into<String>) -> Classification {
    Classification::Unrecognised {
        reason: clip(&reason.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Whole message

fn classify_unguarded(raw: &[u8], reply_local: &str) -> Option<Inbound> {
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    let msg = MessageParser::default().parse(raw)?;
    let headers = Headers::of(&msg);
    if headers.0.is_empty() {
        return None;
    }
    let subject = msg.subject().unwrap_or_default().to_string();
    let header_auto = auto_header_reason(&headers);

    let mut refs = Refs::default();
    for name in ["to", "cc", "delivered-to", "x-original-to", "envelope-to"] {
        headers
            .all(name)
            .for_each(|value| refs.plus_addresses(value, reply_local));
    }
    for value in headers.all("in-reply-to").chain(headers.all("references")) {
        let ids = value.split(|c: char| c == '<' || c == '>' || c == ',' || c.is_whitespace());
        ids.filter_map(|id| id.split_once('@'))
            .for_each(|(local, _)| refs.push(local));
    }

    let content_type = msg
        .content_type()
        .filter(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
    let report_type = content_type
        .and_then(|ct| ct.attribute("report-type"))
        .unwrap_or_default();
    let report_type = report_type.to_ascii_lowercase();

    let classification = if let Some(bounce) = bounce(&msg, &headers, &subject, &report_type) {
        bounce_refs(&msg, reply_local, &mut refs);
        bounce
    } else if report_type == "feedback-report" || has_part(&msg, "message", "feedback-report") {
        unrecognised("abuse feedback report (ARF)")
    } else if headers.first("x-apple-unsubscribe").is_some()
        || subject.trim().eq_ignore_ascii_case("unsubscribe")
    {
        // Someone (or their mail client for them) wants out: a human should see that.
        unrecognised("unsubscribe request")
    } else if let Some(reason) = header_auto
        .clone()
        .or_else(|| (report_type == "disposition-notification").then(|| "read receipt".into()))
        .or_else(|| auto_subject(&subject).then(|| format!("automatic subject: {subject}")))
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
        message_id: msg.message_id().map(str::to_string),
        from: from_address(&msg).map(str::to_string),
        subject,
        refs: refs.0,
        authentication_results: headers
            .all("authentication-results")
            .map(String::from)
            .collect(),
        auto_submitted: header_auto.is_some()
            || matches!(classification, Classification::AutoReply { .. }),
        classification,
    })
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
            let unfolded = value.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            Some((
                h.name.as_str().to_ascii_lowercase(),
                unfolded.trim().to_string(),
            ))
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

/// Deduplicated refs in the order found.
#[derive(Default)]
struct Refs(Vec<String>);

impl Refs {
    fn push(&mut self, candidate: &str) {
        let candidate = candidate.trim().to_ascii_lowercase();
        let base32 = |b: u8| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b);
        if candidate.len() == 26 && candidate.bytes().all(base32) && !self.0.contains(&candidate) {
            self.0.push(candidate);
        }
    }

    /// Every `<reply_local>+<ref>@` in `text` (case-insensitive, not inside a longer local part).
    fn plus_addresses(&mut self, text: &str, reply_local: &str) {
        if reply_local.is_empty() {
            return;
        }
        // ASCII lowercasing keeps byte offsets, so slicing `lower` stays on char boundaries.
        let lower = text.to_ascii_lowercase();
        let needle = format!("{}+", reply_local.to_ascii_lowercase());
        let mut from = 0;
        while let Some(pos) = lower.get(from..).and_then(|t| t.find(&needle)) {
            let before = lower[..from + pos].chars().next_back();
            from += pos + needle.len();
            let boundary =
                before.is_none_or(|c| !(c.is_ascii_alphanumeric() || "._-+".contains(c)));
            if let (true, Some(at)) = (boundary, lower[from..].find('@')) {
                self.push(&lower[from..from + at]);
            }
        }
    }
}

fn from_address<'a>(msg: &'a Message<'_>) -> Option<&'a str> {
    msg.from()?.first()?.address()
}

fn has_part(msg: &Message<'_>, ctype: &str, subtype: &str) -> bool {
    msg.parts.iter().any(|p| p.is_content_type(ctype, subtype))
}

/// Text of a leaf part; mail-parser gives non-text parts (message/delivery-status) as bytes.
fn part_text(part: &MessagePart<'_>) -> Option<String> {
    match &part.body {
        PartType::Text(t) | PartType::Html(t) => Some(t.to_string()),
        PartType::Binary(b) | PartType::InlineBinary(b) => Some(String::from_utf8_lossy(b).into()),
        _ => None,
    }
}

/// All text parts of the message itself (not of attached messages), joined.
fn body_texts(msg: &Message<'_>) -> String {
    let texts = msg.parts.iter().filter_map(|p| match &p.body {
        PartType::Text(t) => Some(t.to_string()),
        PartType::Html(h) => Some(html_to_text(h)),
        _ => None,
    });
    texts.collect::<Vec<_>>().join("\n")
}

fn clip(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
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
        return Some(status.unwrap_or_else(|| notice(msg, subject)));
    }
    is_failure_notice(msg, h, subject).then(|| notice(msg, subject))
}

/// Reads the per-recipient fields of a message/delivery-status part (RFC 3464).
fn delivery_status(text: &str) -> Option<Classification> {
    let fields = unfolded_fields(text);
    let values = |name: &'static str| {
        let named = fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name));
        named.map(|(_, v)| v.as_str())
    };
    let (mut actions, mut statuses) = (values("action"), values("status"));
    let failed = actions
        .clone()
        .any(|a| a.to_ascii_lowercase().starts_with("failed"))
        || statuses.clone().any(|s| s.starts_with('5'));
    let delayed = actions
        .clone()
        .any(|a| a.to_ascii_lowercase().starts_with("delayed"))
        || statuses.clone().any(|s| s.starts_with('4'));
    if actions.next().is_none() && statuses.next().is_none() {
        return None;
    }
    let status = values("status").find(|s| !s.starts_with('2'));
    let detail = [status, values("diagnostic-code").next()]
        .into_iter()
        .flatten();
    let word = match (failed, delayed) {
        (true, _) => "failed",
        (false, true) => "delayed",
        (false, false) => "delivered",
    };
    let diagnostic = clip(&format!("{word}: {}", detail.collect::<Vec<_>>().join(" ")));
    Some(Classification::Bounce {
        permanent: failed,
        diagnostic,
    })
}

/// "Name: value" fields of a header-like block, with folded lines joined.
fn unfolded_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
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
    let from = headers
        .first("from")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let address = from_address(msg).unwrap_or_default().to_ascii_lowercase();
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

/// A failure notice without a usable DSN part: permanent unless its subject says "delayed".
fn notice(msg: &Message<'_>, subject: &str) -> Classification {
    let s = subject.to_lowercase();
    let delayed = s.contains("delay") || s.starts_with("warning:") || s.contains("being retried");
    // The first line with a 4xx/5xx SMTP reply code says most about why.
    let text = body_texts(msg);
    let smtp_line = text.lines().map(str::trim).find(|line| {
        line.split_whitespace().any(|w| {
            let code = w.as_bytes().get(..3).unwrap_or_default();
            matches!(code, [b'4' | b'5', b'0'..=b'9', b'0'..=b'9'])
                && !w.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
        })
    });
    let diagnostic = match smtp_line {
        Some(line) => clip(&format!("{subject}: {line}")),
        None => clip(subject),
    };
    Classification::Bounce {
        permanent: !delayed,
        diagnostic,
    }
}

/// Refs of the returned original: its Message-ID, or failing that any id/plus address in the text.
fn bounce_refs(msg: &Message<'_>, reply_local: &str, refs: &mut Refs) {
    let before = refs.0.len();
    let local = |id: Option<&str>| id.unwrap_or_default().split('@').next().map(str::to_string);
    for part in &msg.parts {
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
    let text = body_texts(msg);
    refs.plus_addresses(&text, reply_local);
    for chunk in text.split('<').skip(1) {
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

/// The reply's own text: the first text/plain body, else the first HTML body as text.
fn reply_body(msg: &Message<'_>) -> Option<String> {
    let mut parts = msg
        .text_body
        .iter()
        .chain(&msg.html_body)
        .filter_map(|&id| msg.parts.get(id as usize));
    parts.find_map(|p| match &p.body {
        PartType::Text(t) => Some(t.to_string()),
        PartType::Html(h) => Some(html_to_text(h)),
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
    fn dmarc_from_trusted_topmost_only() {
        let ours = "mx.invited.test";
        let check =
            |v: &[&str]| dmarc_pass(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ours);
        let pass =
            "mx.invited.test; dkim=pass header.d=f.test; dmarc=pass (p=none) header.from=f.test";
        let fail = "mx.invited.test; dkim=none; dmarc=fail (p=none) header.from=f.test";
        assert!(check(&[pass]));
        assert!(check(&["MX.Invited.Test 1; DMARC=PASS header.from=f.test"]));
        assert!(check(&["mx.other.test; dmarc=fail", pass]));
        assert!(!check(&[fail, pass]));
        assert!(!check(&["mx.other.test; dmarc=pass"]));
        assert!(!check(&[
            "mx.invited.test; spf=pass (dmarc=pass) smtp.mailfrom=x"
        ]));
        assert!(!check(&["mx.invited.test; dmarc=passed"]));
        assert!(!check(&["mx.invited.test.evil.test; dmarc=pass"]));
        assert!(!check(&[]));
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
}
