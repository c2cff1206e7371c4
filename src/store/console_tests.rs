//! The console's queries on both backends: random transitions against a from-scratch recount
//! (the kept counts must equal it after every batch), and the records list's filters and pages.
//! sled always; PostgreSQL when `INVITED_TEST_PGSTACK=DIR` names a running `scripts/pgstack`
//! server (each test makes a database of its own there), else those runs are skipped.

use chrono::{Duration, TimeZone, Utc};

use super::{Result, Store, Txn};
use crate::funnel::{self, ListEntry, RecordQuery, Recount};
use crate::model::{
    Address, AuthorizationState, Body, Channel, Contact, CustomerInvitation, CustomerState, Email,
    Enrollment, EnrollmentState, Kind, Mpn, ProviderAuthorization, Record, RecordId, Support,
    Timestamp,
};

fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn email(s: &str) -> Email {
    ok(Email::parse(s))
}

pub(crate) fn enrollment(to: &str, company: &str, now: Timestamp) -> Record {
    Record::new(
        Body::Enrollment(Enrollment {
            state: EnrollmentState::PendingVerification,
            company: company.into(),
            country: "KR".into(),
            address: Address {
                street: "1 Main St".into(),
                city: "Seoul".into(),
                postal_code: "04524".into(),
            },
            primary_contact: Contact {
                name: "Kim".into(),
                email: email(to),
                phone: "+82 2 0000 0000".into(),
            },
            support: Support {
                email: email("support@fabrikam.test"),
                phone: "+82 2 0000 0001".into(),
                website: None,
            },
            mpn: Mpn {
                id: "1234567".into(),
                country: "KR".into(),
            },
        }),
        "en-US",
        Channel::Api,
        "enrolled",
        now,
    )
}

pub(crate) fn invitation(provider: &str, to: &str, company: &str, now: Timestamp) -> Record {
    Record::new(
        Body::ProviderAuthorization(ProviderAuthorization {
            state: AuthorizationState::Invited,
            provider: provider.into(),
            email: email(to),
            company: company.into(),
            country: "KR".into(),
            contact_name: String::new(),
            admin_access: true,
            enrollment: None,
        }),
        "en-US",
        Channel::Cli,
        "invited",
        now,
    )
}

fn customer(auth: &Record, to: &str, now: Timestamp) -> Option<Record> {
    let a = auth.authorization()?;
    Some(Record::new(
        Body::CustomerInvitation(CustomerInvitation {
            state: CustomerState::Invited,
            provider: a.provider.clone(),
            reseller_enrollment: a.enrollment.unwrap_or(RecordId([0; 16])),
            reseller_email: a.email.clone(),
            authorization: auth.id,
            email: email(to),
            company: "Customer Co".into(),
        }),
        "en-US",
        Channel::Api,
        "invited",
        now,
    ))
}

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One random transition (or none, when the record refuses it) on `r` through the model.
fn transition(rng: &mut Rng, r: &mut Record, now: Timestamp) {
    let channel = [Channel::Link, Channel::Reply, Channel::Cli, Channel::Timer][rng.below(4)];
    let later = now + Duration::days(7);
    let _effects = match r.kind() {
        Kind::Enrollment => match rng.below(6) {
            0 | 1 => r.verify_contact(channel, now),
            2 => r.approve(Channel::Cli, later, now),
            3 => r.accept_agreement(channel, now),
            4 => r.reject("no", Channel::Cli, now),
            _ => match rng.below(2) {
                0 => r.expire(now),
                _ => r.bounce("550", "no such user", now),
            },
        },
        Kind::ProviderAuthorization => match rng.below(8) {
            0..=2 => r.authorize(RecordId([1; 16]), channel, now),
            3 => r.decline(channel, now),
            4 => r.revoke(Channel::Cli, now),
            5 => r.expire(now),
            6 => r.bounce("550", "no such user", now),
            _ => Ok(r.resend(later, Channel::Cli, now)),
        },
        Kind::CustomerInvitation => match rng.below(4) {
            0 | 1 => r.accept_customer(channel, now),
            2 => r.decline(channel, now),
            _ => r.revoke(Channel::Cli, now),
        },
    };
}

fn recount(store: &Store) -> Recount {
    let mut c = Recount::default();
    for r in ok(store.read().all_records()) {
        c.add(&r);
    }
    c
}

fn day0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0)
        .single()
        .unwrap_or_else(|| panic!("day 0"))
}

/// The kept funnel and days equal a recount; the last-change index lists every record once,
/// newest first.
fn check_against_recount(store: &Store, step: usize) {
    let c = recount(store);
    let read = store.read();
    assert_eq!(ok(read.funnel()), c.funnel(), "funnel after step {step}");
    assert_eq!(
        ok(read.days_since(day0().date_naive())),
        c.days(),
        "days after step {step}"
    );
    let mut all = ok(read.all_records());
    all.sort_by(|a, b| {
        funnel::last_change(b)
            .cmp(&funnel::last_change(a))
            .then_with(|| a.id.to_string().cmp(&b.id.to_string()))
    });
    let page = ok(read.records_page(&RecordQuery {
        page: 1,
        per_page: funnel::MAX_PER_PAGE,
        ..RecordQuery::default()
    }));
    let listed: Vec<RecordId> = page.records.iter().map(|r| r.id).collect();
    let expected: Vec<RecordId> = all
        .iter()
        .take(funnel::MAX_PER_PAGE)
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, expected, "records by last change after step {step}");
}

pub(crate) fn random_transitions_keep_counts_equal_to_a_recount(store: &Store, seed: u64) {
    let mut rng = Rng(seed);
    let emails: Vec<String> = (0..10).map(|i| format!("r{i}@fabrikam{i}.test")).collect();
    let providers = ["contoso-kr", "contoso-jp", "northwind"];
    let mut ids: Vec<RecordId> = Vec::new();
    let mut now = day0();
    for step in 0..400 {
        // time moves on by minutes to hours: the run spans several days
        now += Duration::minutes(rng.below(240) as i64 + 1);
        // one to three changes in one batch, each seeing the ones before it
        let n = 1 + rng.below(3);
        let made: Vec<RecordId> = ok(store.write(|txn: &mut Txn| -> Result<Vec<RecordId>> {
            let mut made = Vec::new();
            for _ in 0..n {
                let to = &emails[rng.below(emails.len())];
                match rng.below(10) {
                    0 => {
                        let r = enrollment(to, "Fabrikam", now);
                        txn.put_new_record(&r)?;
                        made.push(r.id);
                    }
                    1 | 2 => {
                        let p = providers[rng.below(providers.len())];
                        // one live invitation per (provider, address), as `App::invite` keeps it
                        if txn.live_authorization(p, &email(to))?.is_some() {
                            continue;
                        }
                        let r = invitation(p, to, "Fabrikam Korea", now);
                        txn.put_new_record(&r)?;
                        made.push(r.id);
                    }
                    _ if ids.is_empty() => {}
                    3 => {
                        let id = ids[rng.below(ids.len())];
                        let Some(auth) = txn.record(&id)? else {
                            continue;
                        };
                        if auth
                            .authorization()
                            .is_some_and(|a| a.state == AuthorizationState::Authorized)
                        {
                            if let Some(c) = customer(&auth, "admin@customer.test", now) {
                                txn.put_new_record(&c)?;
                                made.push(c.id);
                            }
                        }
                    }
                    4 => {
                        // a queued message noted on the history changes no count
                        let id = ids[rng.below(ids.len())];
                        txn.note_message(&id, "m@invited.test")?;
                    }
                    _ => {
                        let id = ids[rng.below(ids.len())];
                        let Some(mut r) = txn.record(&id)? else {
                            continue;
                        };
                        transition(&mut rng, &mut r, now);
                        txn.put_record(&r)?;
                    }
                }
            }
            Ok(made)
        }));
        ids.extend(made);
        if step % 50 == 49 {
            check_against_recount(store, step);
        }
    }
    check_against_recount(store, 400);
    // the run reached every stage somewhere
    let f = ok(store.read().funnel());
    assert!(f.iter().any(|p| p.stages[5] > 0), "{f:?}");
    assert!(ok(store.read().days_since(day0().date_naive()))
        .iter()
        .any(|d| d.confirmations > 0));
}

/// 25 records, one a minute: kinds, states, providers and companies known; the list's filters
/// and page boundaries against them.
pub(crate) fn filters_and_pages(store: &Store) {
    let t0 = day0();
    let mut made: Vec<Record> = Vec::new();
    for i in 0..25i64 {
        let now = t0 + Duration::minutes(i);
        let r = match i % 5 {
            0 => enrollment(
                &format!("e{i}@Fabrikam.test"),
                &format!("Fabrikam {i}"),
                now,
            ),
            1 | 2 => invitation(
                "contoso-kr",
                &format!("k{i}@northwind.test"),
                &format!("Northwind {i}"),
                now,
            ),
            3 => invitation(
                "contoso-jp",
                &format!("j{i}@northwind.test"),
                &format!("Tailspin {i}"),
                now,
            ),
            _ => {
                let mut r = invitation("contoso-kr", &format!("d{i}@adatum.test"), "Adatum", now);
                let _effects = r.decline(Channel::Link, now);
                r
            }
        };
        made.push(r);
    }
    ok(store.write(|txn: &mut Txn| -> Result<()> {
        for r in &made {
            txn.put_new_record(r)?;
        }
        Ok(())
    }));
    // a later change moves a record to the front
    let mut moved = made[0].clone();
    let _effects = moved.verify_contact(Channel::Reply, t0 + Duration::hours(2));
    ok(store.write(|txn: &mut Txn| txn.put_record(&moved)));

    let ids = |q: RecordQuery| -> (Vec<RecordId>, bool) {
        let p = ok(store.read().records_page(&q));
        assert_eq!(p.page, q.page.max(1));
        (p.records.iter().map(|r| r.id).collect(), p.has_next)
    };
    let expect = |f: &dyn Fn(&Record) -> bool| -> Vec<RecordId> {
        let mut v: Vec<&Record> = made.iter().filter(|r| f(r)).collect();
        v.sort_by_key(|r| std::cmp::Reverse(funnel::last_change(r)));
        // the moved record is the newest
        if let Some(i) = v.iter().position(|r| r.id == moved.id) {
            let r = v.remove(i);
            v.insert(0, r);
        }
        v.iter().map(|r| r.id).collect()
    };
    let q = |page: u32, per_page: usize| RecordQuery {
        page,
        per_page,
        ..RecordQuery::default()
    };
    let all = expect(&|_| true);
    assert_eq!(all[0], moved.id);
    // pages of 10: 10 + 10 + 5, has_next on the first two only
    assert_eq!(ids(q(1, 10)), (all[..10].to_vec(), true));
    assert_eq!(
        ids(q(0, 10)),
        (all[..10].to_vec(), true),
        "page 0 is page 1"
    );
    assert_eq!(ids(q(2, 10)), (all[10..20].to_vec(), true));
    assert_eq!(ids(q(3, 10)), (all[20..].to_vec(), false));
    assert_eq!(ids(q(4, 10)), (vec![], false));
    // exactly full: no next page
    assert_eq!(ids(q(1, 25)), (all.clone(), false));
    assert_eq!(ids(q(5, 5)), (all[20..].to_vec(), false));
    assert_eq!(ids(q(1, 24)), (all[..24].to_vec(), true));

    let with = |f: &dyn Fn(&mut RecordQuery)| {
        let mut x = q(1, 100);
        f(&mut x);
        ids(x).0
    };
    let entry = |r: &Record| ListEntry::of(r);
    assert_eq!(
        with(&|x| x.kind = Some(Kind::Enrollment)),
        expect(&|r| r.kind() == Kind::Enrollment)
    );
    assert_eq!(with(&|x| x.kind = Some(Kind::Enrollment)).len(), 5);
    assert_eq!(
        with(&|x| x.state = Some("declined".into())),
        expect(&|r| r.state_str() == "declined")
    );
    assert_eq!(with(&|x| x.state = Some("declined".into())).len(), 5);
    assert_eq!(
        with(&|x| x.provider = Some("contoso-jp".into())),
        expect(&|r| r.provider() == Some("contoso-jp"))
    );
    assert_eq!(
        with(&|x| {
            x.provider = Some("contoso-kr".into());
            x.state = Some("invited".into());
        }),
        expect(&|r| r.provider() == Some("contoso-kr") && r.state_str() == "invited")
    );
    assert_eq!(
        with(&|x| {
            x.provider = Some("contoso-kr".into());
            x.state = Some("invited".into());
        })
        .len(),
        10
    );
    // text: email or company, any case
    assert_eq!(
        with(&|x| x.text = Some("FABRIKAM".into())),
        expect(&|r| entry(r).email.contains("fabrikam") || entry(r).company.contains("fabrikam"))
    );
    assert_eq!(with(&|x| x.text = Some("FABRIKAM".into())).len(), 5);
    assert_eq!(with(&|x| x.text = Some("tailSPIN".into())).len(), 5);
    assert_eq!(with(&|x| x.text = Some("@adatum.".into())).len(), 5);
    assert_eq!(with(&|x| x.text = Some("nobody".into())), vec![]);
    // every filter at once, paged
    let mut x = q(1, 3);
    x.kind = Some(Kind::ProviderAuthorization);
    x.provider = Some("contoso-kr".into());
    x.state = Some("invited".into());
    x.text = Some("northwind 1".into());
    let want = expect(&|r| {
        r.provider() == Some("contoso-kr")
            && r.state_str() == "invited"
            && r.company().to_lowercase().contains("northwind 1")
    });
    assert_eq!(want.len(), 5, "Northwind 1, 11, 12, 16, 17");
    assert_eq!(ids(x.clone()), (want[..3].to_vec(), true));
    x.page = 2;
    assert_eq!(ids(x), (want[3..].to_vec(), false));
}

fn sled_store() -> (tempfile::TempDir, Store) {
    let dir = ok(tempfile::tempdir());
    let s = ok(Store::open_sled(&dir.path().join("store"), 1 << 22));
    (dir, s)
}

/// The `scripts/pgstack` server named by `INVITED_TEST_PGSTACK`, if any: (port, password file).
fn pgstack() -> Option<(String, String)> {
    let dir = std::env::var("INVITED_TEST_PGSTACK").ok()?;
    let env = ok(std::fs::read_to_string(format!("{dir}/env")));
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("{k} missing from {dir}/env"))
    };
    Some((var("PGSTACK_PORT"), var("PGSTACK_PASSWORD_FILE")))
}

/// Runs `sql` on database `db` of the pgstack server.
fn pg_sql(db: &str, sql: &str) {
    let Some((port, password_file)) = pgstack() else {
        return;
    };
    let password = ok(std::fs::read_to_string(&password_file));
    let rt = ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build());
    rt.block_on(async {
        let (client, conn) = ok(tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={port} user=invited dbname={db} password={}",
                password.trim()
            ),
            tokio_postgres::NoTls,
        )
        .await);
        let task = tokio::spawn(conn);
        ok(client.batch_execute(sql).await);
        drop(client);
        let _ = task.await;
    });
}

/// A fresh database on the pgstack server (its name, and the store on it), if there is one.
fn pg_store_named() -> Option<(String, Store)> {
    let (port, password_file) = pgstack()?;
    let name = format!("u{}", crate::model::random_ref());
    pg_sql("postgres", &format!("CREATE DATABASE {name}"));
    Some((name.clone(), pg_open(&port, &password_file, &name)))
}

fn pg_open(port: &str, password_file: &str, name: &str) -> Store {
    let cfg = crate::config::PostgresStore {
        url: format!("postgres://invited@127.0.0.1:{port}/{name}"),
        password_file: Some(password_file.into()),
        pool_size: 4,
        lease: std::time::Duration::from_secs(60),
    };
    Store::Postgres(ok(super::postgres::Store::open(&cfg, "test")))
}

pub(crate) fn pg_store() -> Option<Store> {
    pg_store_named().map(|(_, s)| s)
}

/// Migration 3 on a database that holds records (as schema 1 left them): the columns and the
/// confirmations are filled from the stored records, so the queries answer as before.
#[test]
fn postgres_migration_3_fills_the_console_columns_from_the_records() {
    let Some((name, store)) = pg_store_named() else {
        eprintln!("skipped: INVITED_TEST_PGSTACK is not set");
        return;
    };
    random_transitions_keep_counts_equal_to_a_recount(&store, 777);
    let answers = |s: &Store| {
        let read = s.read();
        (
            ok(read.funnel()),
            ok(read.days_since(day0().date_naive())),
            ok(read.records_page(&RecordQuery {
                page: 2,
                per_page: 50,
                text: Some("fabrikam".into()),
                ..RecordQuery::default()
            }))
            .records
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        )
    };
    let before = answers(&store);
    assert!(!before.2.is_empty());
    drop(store);
    pg_sql(
        &name,
        "DROP TABLE confirmations;
         DROP INDEX records_changed, records_provider_state_changed, records_created, records_funnel;
         ALTER TABLE records DROP COLUMN created_ms, DROP COLUMN changed_ms, DROP COLUMN company;
         DELETE FROM invited_schema WHERE version = 3;",
    );
    let Some((port, password_file)) = pgstack() else {
        return;
    };
    let store = pg_open(&port, &password_file, &name);
    assert_eq!(answers(&store), before);
}

#[test]
fn sled_random_transitions_keep_the_console_counts() {
    let (_d, s) = sled_store();
    random_transitions_keep_counts_equal_to_a_recount(&s, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn sled_random_transitions_keep_the_console_counts_another_seed() {
    let (_d, s) = sled_store();
    random_transitions_keep_counts_equal_to_a_recount(&s, 12345);
}

#[test]
fn sled_records_list_filters_and_pages() {
    let (_d, s) = sled_store();
    filters_and_pages(&s);
}

#[test]
fn postgres_random_transitions_agree_with_a_recount() {
    let Some(s) = pg_store() else {
        eprintln!("skipped: INVITED_TEST_PGSTACK is not set");
        return;
    };
    random_transitions_keep_counts_equal_to_a_recount(&s, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn postgres_records_list_filters_and_pages() {
    let Some(s) = pg_store() else {
        eprintln!("skipped: INVITED_TEST_PGSTACK is not set");
        return;
    };
    filters_and_pages(&s);
}
