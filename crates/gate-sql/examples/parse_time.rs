//! Time per [`gate_sql::analyze`] call, next to sqlparser's bare `parse_sql` for scale.
//! Run in release: `cargo run -p gate-sql --release --example parse_time`
use std::hint::black_box;
use std::time::Instant;

use gate_sql::{SqlDialect, analyze};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

const ITERATIONS: u32 = 200_000;

fn per_call(f: impl Fn()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let started = Instant::now();
    for _ in 0..ITERATIONS {
        f();
    }
    started.elapsed().as_secs_f64() / f64::from(ITERATIONS) * 1e6
}

fn time(sql: &str, dialect: SqlDialect) {
    let analyze_us = per_call(|| {
        black_box(analyze(black_box(sql), dialect));
    });
    let parse_us = per_call(|| {
        let _ = black_box(match dialect {
            SqlDialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, black_box(sql)),
            SqlDialect::Mysql => Parser::parse_sql(&MySqlDialect {}, black_box(sql)),
        });
    });
    println!("analyze {analyze_us:>6.2} µs/call  (bare parse_sql {parse_us:>6.2} µs)  {sql}");
}

fn main() {
    time(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        SqlDialect::Postgres,
    );
    time(
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        SqlDialect::Postgres,
    );
    time(
        "SELECT a.aid, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b ON a.bid = b.bid WHERE a.aid = 42",
        SqlDialect::Postgres,
    );
    time(
        "SELECT `c` FROM `sbtest1` WHERE `id` = 42",
        SqlDialect::Mysql,
    );
}
