//! Per-message CPU on the send path: render (handlebars text + HTML, signed link) and build the
//! MIME message, as the sender does for every outbox item. `cargo bench --bench send_path`.

use std::collections::BTreeMap;
use std::time::Instant;

use invited::model::{Email, Purpose, RecordId};
use invited::outbox::{LinkSpec, MailFieldsV1, MailKind, OutboxItem, Sender};
use invited::templates::Templates;
use invited::token::Keys;

fn main() {
    let templates = Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
    let mut k = BTreeMap::new();
    k.insert("k1".to_string(), vec![7u8; 32]);
    let keys = Keys::from_bytes("k1", k);
    let from = Email::parse("partners@invited.test").unwrap_or_else(|e| panic!("{e}"));
    let reply_to = Email::parse("replies@invited.test").unwrap_or_else(|e| panic!("{e}"));
    let to = Email::parse("minji.kim@fabrikam.test").unwrap_or_else(|e| panic!("{e}"));
    let sender = Sender {
        from_name: "Contoso Distribution",
        from: &from,
        reply_to: &reply_to,
        public_url: "https://partners.contoso.test",
        keys: &keys,
        templates: &templates,
        dkim: None,
    };
    let fields = MailFieldsV1 {
        from_name: "Contoso Distribution".into(),
        recipient_name: "Kim Minji".into(),
        recipient_email: to.to_string(),
        company: "Fabrikam Korea Ltd.".into(),
        country: "KR".into(),
        provider_name: "Contoso Distribution Korea".into(),
        provider_email: "ops@contoso.test".into(),
        reply_enabled: true,
        admin_access: true,
        in_markets: true,
        state: "invited".into(),
        needs_enrollment: true,
        ..Default::default()
    };
    let link = Some(LinkSpec {
        purpose: Purpose::AuthorizeProvider,
        generation: 0,
        expires_at: 2_000_000_000,
    });
    let now = chrono::Utc::now();
    // `cargo bench` passes --bench; under `cargo test --all-targets` this only checks that it runs
    let n = if std::env::args().any(|a| a == "--bench") {
        5000
    } else {
        20
    };
    for locale in ["en-US", "ko-KR"] {
        let item = OutboxItem::queued(
            invited::model::random_ref(),
            "invited.test",
            &to,
            "Kim Minji",
            MailKind::ProviderInvitation,
            locale,
            RecordId::random(),
            fields.clone(),
            link.clone(),
            now,
        );
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..n {
            bytes += sender
                .render(&item)
                .map(|r| r.text.len() + r.html.len())
                .unwrap_or(0);
        }
        let render = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            bytes += sender
                .build(&item)
                .map(|m| m.formatted().len())
                .unwrap_or(0);
        }
        let build = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "{locale}: render {:.1} µs/msg, render + build + format {:.1} µs/msg ({:.0} msg/s on one core) [{bytes} bytes]",
            render * 1e6,
            build * 1e6,
            1.0 / build
        );
    }
}
