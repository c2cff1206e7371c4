//! A scripted SMTP server on 127.0.0.1, port 0, for what `smtp-sink` cannot show: it answers from
//! a script, records every command and DATA payload, notes whether commands came pipelined, and
//! notes any command a client sent before the reply to the one before (on a server that does
//! not offer PIPELINING). One thread per connection; stops when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct Script {
    pub pipelining: bool,
    /// Offer AUTH PLAIN LOGIN and answer AUTH with this; `None`: AUTH not offered.
    pub auth: Option<&'static str>,
    pub mail: &'static str,
    /// The reply to RCPT for a recipient address.
    pub rcpt: fn(&str) -> &'static str,
    pub data: &'static str,
    /// The reply after the end of data.
    pub end: &'static str,
    /// Wait this long before the greeting (so a test's sends are all queued first).
    pub greeting_delay: Duration,
    /// Close the connection, without a word, after this many messages on it.
    pub close_after: Option<usize>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            pipelining: true,
            auth: None,
            mail: "250 2.1.0 Ok",
            rcpt: |_| "250 2.1.5 Ok",
            data: "354 End data with <CR><LF>.<CR><LF>",
            end: "250 2.0.0 Ok: queued",
            greeting_delay: Duration::ZERO,
            close_after: None,
        }
    }
}

#[derive(Default, Clone, Debug)]
pub struct Log {
    pub connections: usize,
    /// Connections this server closed on its own (`close_after`).
    pub closed: usize,
    /// Every command line, without CRLF.
    pub commands: Vec<String>,
    /// Every DATA payload as received, dot-stuffed, up to and including the ".\r\n" line.
    pub data: Vec<Vec<u8>>,
    /// With PIPELINING: for each MAIL, whether its RCPT and DATA had arrived before we replied.
    pub mail_groups_whole: Vec<bool>,
    /// With PIPELINING: for each end of data, whether the next MAIL had arrived before we
    /// replied (the client sent it behind the body).
    pub mail_behind_body: Vec<bool>,
    /// Without PIPELINING: commands that arrived before the reply to the command before them.
    pub out_of_turn: Vec<String>,
}

pub struct Scripted {
    pub port: u16,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    pub fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                l.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
                let (script, l) = (script.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = session(conn, &script, &l);
                });
            }
        });
        Scripted { port, log, stop }
    }

    pub fn log(&self) -> Log {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

/// Whether the client has sent more within `wait`; nothing read is lost (it stays buffered).
fn more_arrives(r: &mut BufReader<TcpStream>, wait: Duration) -> bool {
    if !r.buffer().is_empty() {
        return true;
    }
    let _ = r.get_ref().set_read_timeout(Some(wait));
    let more = matches!(r.fill_buf(), Ok(b) if !b.is_empty());
    let _ = r.get_ref().set_read_timeout(Some(Duration::from_secs(30)));
    more
}

/// Whether `line` (a whole command) arrives within `wait`, without consuming anything.
fn buffered_has(r: &mut BufReader<TcpStream>, line: &str, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if String::from_utf8_lossy(r.buffer()).contains(line) {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        // BufReader only reads more when its buffer is empty: peek at the socket instead
        let mut peek = [0u8; 8192];
        let _ = r.get_ref().set_read_timeout(Some(deadline - now));
        let seen = r.get_ref().peek(&mut peek).unwrap_or(0);
        let _ = r.get_ref().set_read_timeout(Some(Duration::from_secs(30)));
        let mut all = r.buffer().to_vec();
        all.extend_from_slice(&peek[..seen]);
        if String::from_utf8_lossy(&all).contains(line) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn session(conn: TcpStream, script: &Script, log: &Mutex<Log>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(conn);
    let record = |f: &dyn Fn(&mut Log)| f(&mut log.lock().unwrap_or_else(|p| p.into_inner()));
    std::thread::sleep(script.greeting_delay);
    w.write_all(b"220 scripted ESMTP\r\n")?;
    let mut line = String::new();
    let mut messages = 0;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_string();
        record(&|l| l.commands.push(cmd.clone()));
        let verb = cmd
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if !script.pipelining && verb != "QUIT" && more_arrives(&mut r, Duration::from_millis(300))
        {
            record(&|l| l.out_of_turn.push(cmd.clone()));
        }
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let mut lines = vec!["250-scripted"];
                if script.pipelining {
                    lines.push("250-PIPELINING");
                }
                if script.auth.is_some() {
                    lines.push("250-AUTH PLAIN LOGIN");
                }
                lines.push("250-8BITMIME");
                lines.push("250 ENHANCEDSTATUSCODES");
                lines.join("\r\n")
            }
            "AUTH" => script.auth.unwrap_or("502 5.5.1 not offered").to_string(),
            "MAIL" => {
                if script.pipelining {
                    let whole = buffered_has(&mut r, "DATA\r\n", Duration::from_secs(2));
                    record(&|l| l.mail_groups_whole.push(whole));
                }
                script.mail.to_string()
            }
            "RCPT" => {
                let addr = cmd
                    .split_once('<')
                    .and_then(|(_, a)| a.split_once('>'))
                    .map_or("", |(a, _)| a);
                (script.rcpt)(addr).to_string()
            }
            "DATA" => {
                w.write_all(format!("{}\r\n", script.data).as_bytes())?;
                if !script.data.starts_with("354") {
                    continue;
                }
                let mut payload = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l)? == 0 {
                        return Ok(());
                    }
                    payload.extend_from_slice(&l);
                    if l == b".\r\n" {
                        break;
                    }
                }
                record(&|l| l.data.push(payload.clone()));
                if script.pipelining {
                    let behind = buffered_has(&mut r, "MAIL FROM:", Duration::from_millis(300));
                    record(&|l| l.mail_behind_body.push(behind));
                } else if more_arrives(&mut r, Duration::from_millis(300)) {
                    record(&|l| l.out_of_turn.push("(after the end of data)".into()));
                }
                if payload == b".\r\n" {
                    // what Postfix answers an empty message with no valid recipient
                    "554 5.5.1 Error: no valid recipients".to_string()
                } else {
                    messages += 1;
                    if script.close_after == Some(messages) {
                        w.write_all(format!("{}\r\n", script.end).as_bytes())?;
                        let _ = w.shutdown(std::net::Shutdown::Both);
                        record(&|l| l.closed += 1);
                        return Ok(());
                    }
                    script.end.to_string()
                }
            }
            "RSET" | "NOOP" => "250 2.0.0 Ok".to_string(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => "502 5.5.2 Error: command not recognized".to_string(),
        };
        w.write_all(format!("{reply}\r\n").as_bytes())?;
    }
}
