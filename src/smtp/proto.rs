//! SMTP as data, no I/O: replies (multi-line, enhanced status codes), EHLO capabilities, command
//! lines, the DATA payload (CRLF and dot-stuffing) and SASL responses. `client` drives these over
//! a socket; everything here is tested with byte tables.

use std::fmt;

/// A reply larger than this (all its lines) is a protocol error, not something to buffer.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// RFC 5321 §4.5.3.1.5 allows 512 octets for a reply line; we take 8 times that.
pub const MAX_LINE_BYTES: usize = 4096;

/// One server reply: its code and the text of each line (code and separator removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The enhanced status code (RFC 3463) at the start of the first line, as `"5.7.8"`.
    pub fn enhanced_code(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let word = first.split(' ').next()?;
        let mut parts = word.split('.');
        let ok = matches!(parts.next(), Some("2" | "4" | "5"))
            && parts.next().is_some_and(|p| {
                !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())
            })
            && parts.next().is_some_and(|p| {
                !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())
            })
            && parts.next().is_none();
        ok.then_some(word)
    }
}

/// The server's own words: `550 5.1.1 <x@y>: Recipient address rejected`, lines joined by " / ",
/// control characters escaped (the text goes into logs, history and provider notices).
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for (i, l) in self.lines.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(&crate::text::escape_controls(l))?;
        }
        Ok(())
    }
}

/// Parses the first complete reply in `buf`. `Ok(None)`: more bytes are needed. `Ok(Some((reply,
/// used)))`: `used` bytes made the reply. Lines end in CRLF (a bare LF is accepted, as Postfix
/// does). Every line must carry the same three-digit code; `-` after it continues the reply.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE_BYTES {
                return Err(format!("a reply line longer than {MAX_LINE_BYTES} bytes"));
            }
            return Ok(None);
        };
        if nl > MAX_LINE_BYTES {
            return Err(format!("a reply line longer than {MAX_LINE_BYTES} bytes"));
        }
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        pos += nl + 1;
        if pos > MAX_REPLY_BYTES {
            return Err(format!("a reply longer than {MAX_REPLY_BYTES} bytes"));
        }
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(digits) = digits else {
            return Err(format!(
                "not an SMTP reply line: {:?}",
                crate::text::escape_controls(&String::from_utf8_lossy(line))
            ));
        };
        let this = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(200..600).contains(&this) {
            return Err(format!("reply code {this} out of range"));
        }
        if code.is_some_and(|c| c != this) {
            return Err(format!(
                "a multi-line reply changed its code from {} to {this}",
                code.unwrap_or(0)
            ));
        }
        code = Some(this);
        let (more, text) = match line.get(3) {
            None => (false, &line[3..]),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => {
                return Err(format!(
                    "not an SMTP reply line: {:?}",
                    crate::text::escape_controls(&String::from_utf8_lossy(line))
                ))
            }
        };
        lines.push(String::from_utf8_lossy(text).into_owned());
        if !more {
            return Ok(Some((Reply { code: this, lines }, pos)));
        }
    }
}

/// What the server said it supports in its EHLO reply (the keywords we act on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920: commands may be sent in groups.
    pub pipelining: bool,
    /// RFC 1870: `Some(limit)`; a limit of 0 means none stated.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub starttls: bool,
    /// SASL mechanisms offered, upper case.
    pub auth: Vec<String>,
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// From a positive EHLO reply: the first line is the server's name, each further line one
    /// keyword with its parameters. A HELO reply (no extensions) gives the default: nothing.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "AUTH" => caps.auth.extend(words.map(str::to_ascii_uppercase)),
                // the pre-RFC 2554 form some servers still send beside AUTH
                k if k.starts_with("AUTH=") => {
                    caps.auth.push(k["AUTH=".len()..].to_string());
                    caps.auth.extend(words.map(str::to_ascii_uppercase));
                }
                _ => {}
            }
        }
        caps.auth.sort();
        caps.auth.dedup();
        caps
    }
}

/// An address for MAIL FROM / RCPT TO: printable ASCII or UTF-8 without spaces, angle brackets
/// or control characters (lettre's `Address` already is; this keeps a command line one line).
fn checked_address(addr: &str) -> Result<&str, String> {
    if addr
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    {
        return Err(format!(
            "address {:?} cannot go in an SMTP command",
            crate::text::escape_controls(addr)
        ));
    }
    Ok(addr)
}

/// `MAIL FROM:<from>` with `SIZE=` when the server takes it and `BODY=8BITMIME` when the message
/// has 8-bit bytes and the server takes them; CRLF included.
pub fn mail_from(
    from: &str,
    caps: &Capabilities,
    size: usize,
    eight_bit: bool,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.extend_from_slice(b"MAIL FROM:<");
    out.extend_from_slice(checked_address(from)?.as_bytes());
    out.push(b'>');
    if caps.size.is_some() {
        out.extend_from_slice(format!(" SIZE={size}").as_bytes());
    }
    if eight_bit && caps.eight_bit_mime {
        out.extend_from_slice(b" BODY=8BITMIME");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `RCPT TO:<to>` with CRLF.
pub fn rcpt_to(to: &str, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(checked_address(to)?.as_bytes());
    out.extend_from_slice(b">\r\n");
    Ok(())
}

/// The DATA payload of `message`, ready to write after the 354: every line ends in CRLF (a bare
/// CR or LF becomes CRLF, so no `<LF>.<CR><LF>` can reach a server: SMTP smuggling), a line that
/// starts with "." gets another "." (RFC 5321 §4.5.2), the last line is ended, and the
/// end-of-data line ".\r\n" follows.
pub fn data_payload(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut rest = message;
    let mut line_start = true;
    while !rest.is_empty() {
        if line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                out.extend_from_slice(rest);
                line_start = false;
                rest = &[];
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(b"\r\n");
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
                line_start = true;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// What AUTH proves: a password (PLAIN, LOGIN) or an OAuth2 bearer token (XOAUTH2,
/// OAUTHBEARER). `Debug` never shows the password or the token.
#[derive(Clone)]
pub enum Credentials {
    Password {
        username: String,
        password: String,
    },
    /// The whole SASL initial response for `mechanism` (it carries the token), built by the
    /// caller from the user and a fresh token (`oauth::xoauth2`, `oauth::oauthbearer`).
    Bearer {
        mechanism: Mechanism,
        initial_response: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Bearer { mechanism, .. } => f
                .debug_struct("Bearer")
                .field("mechanism", mechanism)
                .field("initial_response", &"<redacted>")
                .finish(),
        }
    }
}

/// A SASL mechanism we can use: one variant here plus its answers below; `client` stays as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616: one initial response, `\0user\0password`.
    Plain,
    /// The de-facto LOGIN: the server asks for the username, then the password.
    Login,
    /// Google's and Microsoft's XOAUTH2: `user=…\x01auth=Bearer …\x01\x01`.
    XOAuth2,
    /// RFC 7628 OAUTHBEARER.
    OAuthBearer,
}

impl Mechanism {
    /// Password mechanisms in the order we prefer them.
    pub const PASSWORD: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The mechanisms `creds` can be used with, in the order we prefer them.
    pub fn usable(creds: &Credentials) -> &'static [Mechanism] {
        match creds {
            Credentials::Password { .. } => &Mechanism::PASSWORD,
            Credentials::Bearer {
                mechanism: Mechanism::OAuthBearer,
                ..
            } => &[Mechanism::OAuthBearer],
            Credentials::Bearer { .. } => &[Mechanism::XOAuth2],
        }
    }

    /// The first mechanism we prefer for `creds` among those the server offers.
    pub fn choose(offered: &[String], creds: &Credentials) -> Option<Mechanism> {
        Mechanism::usable(creds)
            .iter()
            .copied()
            .find(|m| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name())))
    }

    /// The response sent with the AUTH command itself (RFC 4954 initial response); `None` when
    /// the mechanism waits for the server's first challenge.
    pub fn initial_response(self, creds: &Credentials) -> Option<Vec<u8>> {
        match (self, creds) {
            (Mechanism::Plain, Credentials::Password { username, password }) => {
                let mut r = Vec::with_capacity(username.len() + password.len() + 2);
                r.push(0);
                r.extend_from_slice(username.as_bytes());
                r.push(0);
                r.extend_from_slice(password.as_bytes());
                Some(r)
            }
            (
                Mechanism::XOAuth2 | Mechanism::OAuthBearer,
                Credentials::Bearer {
                    initial_response, ..
                },
            ) => Some(initial_response.as_bytes().to_vec()),
            _ => None,
        }
    }

    /// The answer to the server's `step`-th challenge (0-based, after any initial response).
    /// A bearer mechanism's only challenge is the server's error report (JSON): it is answered
    /// with the empty response (XOAUTH2) or `\x01` (OAUTHBEARER, RFC 7628 §3.2.3) so that the
    /// server sends its final refusal.
    pub fn respond(
        self,
        step: usize,
        _challenge: &[u8],
        creds: &Credentials,
    ) -> Result<Vec<u8>, String> {
        match (self, step, creds) {
            (Mechanism::Login, 0, Credentials::Password { username, .. }) => {
                Ok(username.as_bytes().to_vec())
            }
            (Mechanism::Login, 1, Credentials::Password { password, .. }) => {
                Ok(password.as_bytes().to_vec())
            }
            (Mechanism::XOAuth2, 0, _) => Ok(Vec::new()),
            (Mechanism::OAuthBearer, 0, _) => Ok(vec![1]),
            (m, _, _) => Err(format!(
                "the server sent AUTH {} a challenge it does not take",
                m.name()
            )),
        }
    }

    /// XOAUTH2 and OAUTHBEARER: the server's challenge is its error report, worth keeping.
    pub fn is_bearer(self) -> bool {
        matches!(self, Mechanism::XOAuth2 | Mechanism::OAuthBearer)
    }
}

/// One base64 SASL line with CRLF; RFC 4954 writes an empty response as "=" after AUTH.
pub fn sasl_line(prefix: &str, response: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(prefix.as_bytes());
    if !prefix.is_empty() {
        out.push(b' ');
        if response.is_empty() {
            out.push(b'=');
        }
    }
    out.extend_from_slice(data_encoding::BASE64.encode(response).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<(Reply, usize)>, String> {
        parse_reply(bytes)
    }

    #[test]
    fn replies_parse_from_bytes() {
        type Want = Option<(u16, &'static [&'static str], usize)>;
        let table: &[(&[u8], Want)] = &[
            (b"250 2.1.0 Ok\r\n", Some((250, &["2.1.0 Ok"], 14))),
            (
                b"250 2.1.0 Ok\r\n250 next\r\n",
                Some((250, &["2.1.0 Ok"], 14)),
            ),
            (
                b"250-a\r\n250-b\r\n250 c\r\n",
                Some((250, &["a", "b", "c"], 21)),
            ),
            (b"250-a\r\n250 \r\n", Some((250, &["a", ""], 13))),
            (b"250\r\n", Some((250, &[""], 5))),
            (b"220 bare LF\n", Some((220, &["bare LF"], 12))),
            (b"250-a\r\n250-b", None),
            (b"25", None),
            (b"", None),
        ];
        for (bytes, want) in table {
            let got = parse_all(bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
            let got = got.map(|(r, n)| (r.code, r.lines, n));
            let want = want.map(|(c, l, n)| (c, l.iter().map(|s| s.to_string()).collect(), n));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bytes in [
            &b"hello\r\n"[..],
            b"25x ok\r\n",
            b"250-a\r\n251 b\r\n",
            b"250:x\r\n",
            b"199 too low\r\n",
            b"600 too high\r\n",
        ] {
            assert!(
                parse_reply(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = vec![b'2'; MAX_LINE_BYTES + 2];
        assert!(
            parse_reply(&long).is_err(),
            "an endless line is refused before its end"
        );
        let mut many = Vec::new();
        while many.len() <= MAX_REPLY_BYTES {
            many.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        many.extend_from_slice(b"250 end\r\n");
        assert!(parse_reply(&many).is_err(), "an endless reply is refused");
    }

    #[test]
    fn a_reply_shows_the_servers_words_and_its_enhanced_code() {
        let (r, _) = parse_reply(b"535 5.7.8 Error: authentication failed: bad\r\n")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no reply"));
        assert_eq!(r.to_string(), "535 5.7.8 Error: authentication failed: bad");
        assert_eq!(r.enhanced_code(), Some("5.7.8"));
        assert!(r.is_permanent() && !r.is_transient() && !r.is_positive());
        let (r, _) = parse_reply(b"451-first\r\n451 second\x1b[31m\r\n")
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no reply"));
        assert_eq!(r.to_string(), "451 first / second\\u{1b}[31m");
        assert_eq!(r.enhanced_code(), None);
    }

    #[test]
    fn ehlo_capabilities() {
        let ehlo = Reply {
            code: 250,
            lines: [
                "mx.invited.test",
                "PIPELINING",
                "SIZE 10240000",
                "8BITMIME",
                "AUTH PLAIN LOGIN",
                "AUTH=CRAM-MD5 PLAIN",
                "STARTTLS",
                "ENHANCEDSTATUSCODES",
                "DSN",
                "",
            ]
            .map(String::from)
            .to_vec(),
        };
        let c = Capabilities::from_ehlo(&ehlo);
        assert_eq!(
            c,
            Capabilities {
                pipelining: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                starttls: true,
                auth: vec!["CRAM-MD5".into(), "LOGIN".into(), "PLAIN".into()],
                enhanced_status_codes: true,
            }
        );
        // the first line is the server's name, never a keyword
        let named_pipelining = Reply {
            code: 250,
            lines: vec!["PIPELINING".into(), "size".into()],
        };
        let c = Capabilities::from_ehlo(&named_pipelining);
        assert!(!c.pipelining);
        assert_eq!(c.size, Some(0));
        assert_eq!(
            Capabilities::from_ehlo(&Reply {
                code: 250,
                lines: vec!["helo only".into()]
            }),
            Capabilities::default()
        );
    }

    #[test]
    fn the_data_payload_is_crlf_and_dot_stuffed() {
        let table: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"x\r\n.\r\ny\r\n", b"x\r\n..\r\ny\r\n.\r\n"),
            (
                b"x\r\n..two\r\n.lead\r\nmid.dle\r\n",
                b"x\r\n...two\r\n..lead\r\nmid.dle\r\n.\r\n",
            ),
            (b".", b"..\r\n.\r\n"),
            (b"", b".\r\n"),
            // bare LF and bare CR become CRLF, and the dot after them is stuffed
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\r\n", b"a\r\n..\r\n.\r\n"),
            (b"a\r\n\r\n.", b"a\r\n\r\n..\r\n.\r\n"),
        ];
        for (msg, want) in table {
            assert_eq!(
                String::from_utf8_lossy(&data_payload(msg)),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    /// Undoing the stuffing as a server does gives the message back, CRLF-normalised; no line of
    /// the payload but the last is a lone ".".
    #[test]
    fn a_server_reads_the_message_back_from_the_payload() {
        let msgs: &[&[u8]] = &[
            b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nend",
            b"\r\n.\r\n\r\n.\r\n",
            b"....\r\n",
        ];
        for msg in msgs {
            let p = data_payload(msg);
            let text = String::from_utf8_lossy(&p);
            let lines: Vec<&str> = text.split("\r\n").collect();
            assert_eq!(lines[lines.len() - 2], ".");
            assert_eq!(lines[lines.len() - 1], "");
            let body = &lines[..lines.len() - 2];
            assert!(body.iter().all(|l| *l != "."), "{text:?}");
            let unstuffed: Vec<&str> = body
                .iter()
                .map(|l| l.strip_prefix('.').unwrap_or(l))
                .collect();
            let mut want = String::from_utf8_lossy(msg).into_owned();
            if !want.ends_with("\r\n") {
                want.push_str("\r\n");
            }
            assert_eq!(unstuffed.join("\r\n") + "\r\n", want);
        }
    }

    #[test]
    fn commands_carry_size_and_body_only_when_offered() {
        let mut caps = Capabilities::default();
        let mut out = Vec::new();
        mail_from("a@b.test", &caps, 10, true, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"MAIL FROM:<a@b.test>\r\n");
        caps.size = Some(0);
        caps.eight_bit_mime = true;
        out.clear();
        mail_from("a@b.test", &caps, 10, true, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME\r\n");
        out.clear();
        mail_from("", &caps, 10, false, &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"MAIL FROM:<> SIZE=10\r\n");
        out.clear();
        rcpt_to("c@d.test", &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"RCPT TO:<c@d.test>\r\n");
        for bad in ["a@b\r\nRSET", "a b@c", "a>@b", "a@b\n"] {
            assert!(rcpt_to(bad, &mut Vec::new()).is_err(), "{bad:?}");
            assert!(
                mail_from(bad, &caps, 1, false, &mut Vec::new()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sasl_plain_and_login() {
        let creds = Credentials::Password {
            username: "replies@invited.test".into(),
            password: "pw".into(),
        };
        assert_eq!(
            Mechanism::choose(&["LOGIN".into(), "PLAIN".into()], &creds),
            Some(Mechanism::Plain)
        );
        assert_eq!(
            Mechanism::choose(&["LOGIN".into()], &creds),
            Some(Mechanism::Login)
        );
        assert_eq!(Mechanism::choose(&["CRAM-MD5".into()], &creds), None);
        assert_eq!(Mechanism::choose(&["XOAUTH2".into()], &creds), None);
        let ir = Mechanism::Plain
            .initial_response(&creds)
            .unwrap_or_default();
        let mut line = Vec::new();
        sasl_line("AUTH PLAIN", &ir, &mut line);
        assert_eq!(
            String::from_utf8_lossy(&line),
            "AUTH PLAIN AHJlcGxpZXNAaW52aXRlZC50ZXN0AHB3\r\n"
        );
        assert!(Mechanism::Plain.respond(0, b"", &creds).is_err());
        assert_eq!(Mechanism::Login.initial_response(&creds), None);
        assert_eq!(
            Mechanism::Login.respond(0, b"Username:", &creds),
            Ok(b"replies@invited.test".to_vec())
        );
        assert_eq!(
            Mechanism::Login.respond(1, b"Password:", &creds),
            Ok(b"pw".to_vec())
        );
        assert!(Mechanism::Login.respond(2, b"", &creds).is_err());
        assert!(!format!("{creds:?}").contains("pw\""));
        let mut empty = Vec::new();
        sasl_line("AUTH X", b"", &mut empty);
        assert_eq!(empty, b"AUTH X =\r\n");
    }

    #[test]
    fn sasl_bearer() {
        let x = Credentials::Bearer {
            mechanism: Mechanism::XOAuth2,
            initial_response: "user=u@invited.test\x01auth=Bearer tok-123\x01\x01".into(),
        };
        let offered: Vec<String> = vec!["PLAIN".into(), "LOGIN".into(), "XOAUTH2".into()];
        assert_eq!(Mechanism::choose(&offered, &x), Some(Mechanism::XOAuth2));
        assert_eq!(Mechanism::choose(&["PLAIN".into()], &x), None);
        let ir = Mechanism::XOAuth2.initial_response(&x).unwrap_or_default();
        let mut line = Vec::new();
        sasl_line("AUTH XOAUTH2", &ir, &mut line);
        assert_eq!(
            String::from_utf8_lossy(&line),
            format!(
                "AUTH XOAUTH2 {}\r\n",
                data_encoding::BASE64.encode(b"user=u@invited.test\x01auth=Bearer tok-123\x01\x01")
            )
        );
        // the error challenge is answered empty, so the server sends its final refusal
        assert_eq!(Mechanism::XOAuth2.respond(0, b"{}", &x), Ok(Vec::new()));
        assert!(Mechanism::XOAuth2.respond(1, b"", &x).is_err());
        assert!(!format!("{x:?}").contains("tok-123"));

        let b = Credentials::Bearer {
            mechanism: Mechanism::OAuthBearer,
            initial_response: "n,a=u@invited.test,\x01auth=Bearer tok\x01\x01".into(),
        };
        assert_eq!(Mechanism::choose(&offered, &b), None);
        assert_eq!(
            Mechanism::choose(&["oauthbearer".into()], &b),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(Mechanism::OAuthBearer.respond(0, b"{}", &b), Ok(vec![1]));
        // a password mechanism never takes a token and vice versa
        assert_eq!(Mechanism::Plain.initial_response(&b), None);
    }
}
