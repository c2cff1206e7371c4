//! The record export as CSV, formula-safe: `invited export` and the console's `/export.csv`.

use serde_json::Value;

/// A cell that a spreadsheet would run as a formula gets a leading apostrophe: one starting with
/// `= + - @` (or their fullwidth forms, which some spreadsheets fold to ASCII), a tab or CR, also
/// when zero-width characters stand in front of them.
pub fn csv_safe(s: &str) -> String {
    let zero_width = |c: char| matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}');
    let visible = s.trim_start_matches(zero_width);
    let formula = ['=', '+', '-', '@', '\t', '\r', '＝', '＋', '－', '＠'];
    if visible.starts_with(formula) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// The export as CSV: one row per record, every cell made formula-safe ([`csv_safe`]). The
/// CLI's `invited export` and the console's `/export.csv` write the same bytes.
pub fn csv(v: &Value) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let cols = [
        "id",
        "kind",
        "state",
        "email",
        "provider",
        "company",
        "country",
        "admin_access",
        "created_at",
        "updated_at",
    ];
    w.write_record(cols)?;
    for r in v.as_array().into_iter().flatten() {
        let row: Vec<String> = cols
            .iter()
            .map(|c| match &r[*c] {
                Value::Null => String::new(),
                Value::String(s) => csv_safe(s),
                other => other.to_string(),
            })
            .collect();
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}
