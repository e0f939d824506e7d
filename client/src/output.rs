//! How the command-line clients print: a table for people, pretty JSON for scripts.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};

/// An empty table with `header`, in the clients' one style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value serializes")
    );
}
