use gate_core::{QueryFacts, QueryType};
use gate_sql::{SqlDialect, analyze};

fn one(sql: &str, dialect: SqlDialect) -> QueryFacts {
    let mut facts = analyze(sql, dialect);
    assert_eq!(facts.len(), 1, "{sql:?} gave {facts:?}");
    facts.pop().unwrap()
}

fn pg(sql: &str) -> QueryFacts {
    one(sql, SqlDialect::Postgres)
}

fn my(sql: &str) -> QueryFacts {
    one(sql, SqlDialect::Mysql)
}

fn ty(sql: &str) -> QueryType {
    pg(sql).query_type
}

#[test]
fn each_type() {
    use QueryType::*;
    let cases = [
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            Select,
        ),
        ("VALUES (1), (2)", Select),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Select),
        ("SELECT * FROM a UNION SELECT * FROM b", Select),
        ("INSERT INTO t (a) VALUES (1) RETURNING *", Insert),
        ("INSERT INTO t SELECT * FROM s", Insert),
        ("UPDATE t SET a = 1 FROM s WHERE t.id = s.id", Update),
        ("DELETE FROM t WHERE id = 1", Delete),
        ("DROP TABLE t", Drop),
        ("DROP INDEX i", Drop),
        ("DROP SCHEMA s CASCADE", Drop),
        ("DROP FUNCTION f", Drop),
        ("CREATE TABLE t (a int)", Create),
        ("CREATE TABLE t AS SELECT * FROM s", Create),
        ("CREATE VIEW v AS SELECT * FROM t", Create),
        ("CREATE INDEX i ON t (a)", Create),
        ("CREATE ROLE r", Create),
        ("ALTER TABLE t ADD COLUMN x int", Alter),
        ("ALTER ROLE r WITH SUPERUSER", Alter),
        ("TRUNCATE t", Truncate),
        ("GRANT SELECT ON t TO bob", Grant),
        ("REVOKE SELECT ON t FROM bob", Grant),
        ("COPY t TO STDOUT", Copy),
        ("COPY t FROM STDIN", Copy),
        ("COPY (SELECT * FROM t) TO STDOUT", Copy),
        ("SET search_path = x", Other),
        ("BEGIN", Other),
        ("COMMIT", Other),
        ("SHOW ALL", Other),
        ("LISTEN x", Other),
        ("EXECUTE p", Other),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1",
            Update,
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Delete,
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(ty(sql), expected, "{sql}");
    }
}

#[test]
fn statement_text_is_the_original_trimmed_without_semicolon() {
    let f = pg("  SELECT  1 ;  ");
    assert_eq!(&*f.statement, "SELECT  1");
    assert_eq!(
        &*pg("select\n  *\n from T").statement,
        "select\n  *\n from T"
    );
}

#[test]
fn multi_statement_texts_keep_each_statements_own_text() {
    let sql = "  SELECT 1 ; ;  select 'é;' -- note\n ; /* tag */ DELETE FROM \"T\";  ";
    let facts = analyze(sql, SqlDialect::Postgres);
    let got: Vec<(QueryType, &str)> = facts
        .iter()
        .map(|f| (f.query_type, &*f.statement))
        .collect();
    assert_eq!(
        got,
        [
            (QueryType::Select, "SELECT 1"),
            (QueryType::Select, "select 'é;' -- note"),
            (QueryType::Delete, "/* tag */ DELETE FROM \"T\""),
        ]
    );
    assert_eq!(facts[2].tables, ["T"]);

    // Line ends and multi-line literals do not confuse the positions.
    let facts = analyze(
        "SELECT 1\r\n;\r\nSELECT 'a\nb' ; SELECT 3",
        SqlDialect::Postgres,
    );
    let texts: Vec<&str> = facts.iter().map(|f| &*f.statement).collect();
    assert_eq!(texts, ["SELECT 1", "SELECT 'a\nb'", "SELECT 3"]);
}

#[test]
fn empty_and_comment_only_text_gives_nothing() {
    for sql in ["", "   \n\t", ";", " ; ; ", "-- hi", "/* a */ -- b\n"] {
        assert!(analyze(sql, SqlDialect::Postgres).is_empty(), "{sql:?}");
        assert!(analyze(sql, SqlDialect::Mysql).is_empty(), "{sql:?}");
    }
}

#[test]
fn unparseable_text_is_one_unknown_fact_with_the_whole_text() {
    for sql in [
        " this is not sql ",
        "SELECT 1; garbage here",
        "/* unterminated",
        "SELECT 'unterminated",
        "DO $$ BEGIN DELETE FROM t; END $$",
        "BEGIN; SELECT 1 END",
    ] {
        let facts = analyze(sql, SqlDialect::Postgres);
        assert_eq!(
            facts,
            [QueryFacts {
                query_type: QueryType::Unknown,
                statement: sql.trim().into(),
                tables: vec![],
            }]
        );
    }
}

#[test]
fn absurd_nesting_is_unknown_not_a_crash() {
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(ty(&deep), QueryType::Unknown);
}

#[test]
fn drop_and_truncate_report_their_tables() {
    assert_eq!(pg("DROP TABLE a, s.b CASCADE").tables, ["a", "s.b"]);
    assert_eq!(pg("DROP VIEW IF EXISTS v").tables, ["v"]);
    assert_eq!(pg("TRUNCATE a, ONLY b").tables, ["a", "b"]);
    // An index or schema is not a table.
    assert!(pg("DROP INDEX i").tables.is_empty());
    assert_eq!(my("DROP INDEX i ON t").tables, ["t"]);
}

#[test]
fn tables_are_deduplicated_in_order_of_appearance() {
    let f = pg(
        "SELECT * FROM b JOIN a ON true WHERE x IN (SELECT y FROM b) AND EXISTS (SELECT 1 FROM c)",
    );
    assert_eq!(f.tables, ["b", "a", "c"]);
    assert_eq!(pg("INSERT INTO t SELECT * FROM s").tables, ["t", "s"]);
    assert_eq!(pg("COPY t TO STDOUT").tables, ["t"]);
    assert_eq!(pg("GRANT SELECT ON a, b TO bob").tables, ["a", "b"]);
    assert_eq!(my("RENAME TABLE a TO b").tables, ["a", "b"]);
    assert_eq!(my("LOCK TABLES t READ").tables, ["t"]);
}

#[test]
fn quoted_identifiers_and_case_folding() {
    // PostgreSQL folds unquoted names; quoting or capitals cannot dodge a table policy.
    assert_eq!(pg("SELECT * FROM ACCOUNTS").tables, ["accounts"]);
    assert_eq!(pg("SELECT * FROM \"accounts\"").tables, ["accounts"]);
    assert_eq!(
        pg("SELECT * FROM Public.\"Accounts\"").tables,
        ["public.Accounts"]
    );
    assert_eq!(pg("SELECT * FROM \"My Table\"").tables, ["My Table"]);
    // The statement text itself is untouched.
    assert_eq!(
        &*pg("SELECT * FROM \"My Table\"").statement,
        "SELECT * FROM \"My Table\""
    );
}

#[test]
fn postgres_specific_syntax() {
    let f = pg("SELECT $1::int, a::text FROM t WHERE b = $2");
    assert_eq!(
        (f.query_type, f.tables),
        (QueryType::Select, vec!["t".into()])
    );
    let f = pg("COPY public.t (a, b) TO STDOUT WITH (FORMAT csv)");
    assert_eq!(
        (f.query_type, f.tables),
        (QueryType::Copy, vec!["public.t".into()])
    );
    assert_eq!(ty("LISTEN x"), QueryType::Other);
    assert_eq!(ty("NOTIFY x, 'hi'"), QueryType::Other);
    assert_eq!(
        ty("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"),
        QueryType::Insert
    );
}

#[test]
fn mysql_specific_syntax() {
    let f = my("SELECT * FROM `db`.`My Table` WHERE a = ? LIMIT 1, 2");
    assert_eq!(f.query_type, QueryType::Select);
    assert_eq!(f.tables, ["db.My Table"]);
    assert_eq!(
        &*f.statement,
        "SELECT * FROM `db`.`My Table` WHERE a = ? LIMIT 1, 2"
    );
    // MySQL table names are not folded: case sensitivity depends on the server.
    assert_eq!(my("UPDATE Orders SET a = 1").tables, ["Orders"]);
    assert_eq!(my("DESCRIBE t").query_type, QueryType::Other);
    assert_eq!(my("USE db").query_type, QueryType::Other);
    assert_eq!(my("SELECT a INTO @x FROM t").query_type, QueryType::Select);
    let facts = analyze("SELECT 1 # note\n; SELECT 2", SqlDialect::Mysql);
    assert_eq!(&*facts[0].statement, "SELECT 1 # note");
    assert_eq!(&*facts[1].statement, "SELECT 2");
}

#[test]
fn mysql_executable_comments_are_analyzed() {
    // MySQL executes the content of `/*! … */`.
    let f = my("/*!40101 DROP TABLE t */");
    assert_eq!(
        (f.query_type, f.tables),
        (QueryType::Drop, vec!["t".into()])
    );
    // A separator inside one has no clean place in the text: each fact gets the whole text.
    let sql = "SELECT 1 /*!; DROP TABLE t */";
    let facts = analyze(sql, SqlDialect::Mysql);
    let got: Vec<_> = facts
        .iter()
        .map(|f| (f.query_type, &*f.statement))
        .collect();
    assert_eq!(got, [(QueryType::Select, sql), (QueryType::Drop, sql)]);
    let sql = "SELECT 1 /*!40101 ; DROP TABLE t */ ; SELECT 2";
    let facts = analyze(sql, SqlDialect::Mysql);
    assert_eq!(facts.len(), 3);
    assert!(facts.iter().all(|f| *f.statement == *sql));
    assert_eq!(facts[1].query_type, QueryType::Drop);
}

#[test]
fn explain_takes_the_type_of_the_explained_statement() {
    assert_eq!(ty("EXPLAIN ANALYZE DELETE FROM t"), QueryType::Delete);
    assert_eq!(
        ty("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1"),
        QueryType::Update
    );
    assert_eq!(ty("EXPLAIN SELECT * FROM t"), QueryType::Select);
    assert_eq!(pg("EXPLAIN ANALYZE DELETE FROM t").tables, ["t"]);
    assert_eq!(
        my("EXPLAIN ANALYZE DELETE FROM t").query_type,
        QueryType::Delete
    );
    // PREPARE + EXECUTE must not hide a statement behind `other`.
    assert_eq!(ty("PREPARE p AS DELETE FROM t"), QueryType::Delete);
}

#[test]
fn data_modifying_statements_inside_queries_win() {
    let f = pg("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert_eq!(f.query_type, QueryType::Delete);
    assert_eq!(f.tables, ["t", "d"]);
    assert_eq!(
        ty(
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *), y AS (UPDATE u SET a = 1 RETURNING *) SELECT * FROM x, y"
        ),
        QueryType::Update
    );
    assert_eq!(
        ty("COPY (DELETE FROM t RETURNING *) TO STDOUT"),
        QueryType::Delete
    );
}

#[test]
fn select_into_creates_a_table() {
    let f = pg("SELECT * INTO newt FROM t");
    assert_eq!(f.query_type, QueryType::Create);
    assert_eq!(f.tables, ["newt", "t"]);
    assert_eq!(ty("SELECT * INTO TEMP s.newt FROM t"), QueryType::Create);
}

#[test]
fn routine_bodies_do_not_run_at_create_time() {
    assert_eq!(
        ty("CREATE FUNCTION f() RETURNS void AS $$ DELETE FROM t $$ LANGUAGE sql"),
        QueryType::Create
    );
}
