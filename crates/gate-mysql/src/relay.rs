//! The post-login relay: one command at a time, as the classic protocol is strictly
//! request/response. Commands that carry SQL get a `pre_request` decision; result sets get a
//! mask plan once per shape, applied to every text or binary row; commands that would bypass
//! the gateway (COM_CHANGE_USER, replication, LOCAL INFILE) are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use gate_core::config::ResourceConfig;
use gate_core::{Action, ColumnFacts, Decision, QueryFacts, QueryType};
use gate_enforcement::MaskPlan;
use gate_pipeline::{PooledConn, RequestOutcome, Session, ShapeCache, shape_key};
use gate_sql::SqlDialect;
use mysql_common::constants::CapabilityFlags;
use tokio::io::AsyncWriteExt;

use crate::packet::{self, Packet, PacketError};
use crate::rows;
use crate::upstream::{MAX_UPSTREAM_PACKET, Upstream};
use crate::{ClientCaps, MysqlHandler};
use gate_pipeline::net::ClientStream;

const MAX_CLIENT_PACKET: usize = 256 << 20;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const COM_SET_OPTION: u8 = 0x1b;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_RESET_CONNECTION: u8 = 0x1f;

/// A result shape: the mask plan and the column types (for binary rows).
struct Shape {
    plan: MaskPlan,
    types: Vec<u8>,
    refused: Option<String>,
}

struct Stmt {
    facts: Arc<QueryFacts>,
    decision: Arc<Decision>,
    /// The shape of the last execution (cursor fetches use it).
    shape: Option<Arc<Shape>>,
}

#[derive(Clone, Copy, PartialEq)]
enum RowFormat {
    Text,
    Binary,
}

struct Relay<'a> {
    handler: &'a MysqlHandler,
    session: &'a Session,
    resource: &'a ResourceConfig,
    caps: &'a ClientCaps,
    client: ClientStream,
    cbuf: BytesMut,
    up: Option<PooledConn<Upstream>>,
    stmts: HashMap<u32, Stmt>,
    deprecate_eof: bool,
    out: BytesMut,
    cseq: u8,
    row: Vec<u8>,
    scratch: Vec<u8>,
    /// False after anything that leaves the upstream in an unknown state.
    clean: bool,
    shapes: ShapeCache<Arc<Shape>>,
    /// SQL facts of this session's statements, reused when only literals differ.
    facts: std::sync::Mutex<gate_sql::FactsCache>,
}

enum Flow {
    Continue,
    End(&'static str),
}

fn other_facts(statement: String) -> QueryFacts {
    QueryFacts {
        query_type: QueryType::Other,
        statement: statement.into(),
        tables: Vec::new(),
    }
}

pub(crate) async fn run(
    handler: &MysqlHandler,
    session: &Session,
    client: ClientStream,
    cbuf: BytesMut,
    resource: &ResourceConfig,
    caps: &ClientCaps,
) -> &'static str {
    let mut r = Relay {
        handler,
        session,
        resource,
        caps,
        client,
        cbuf,
        up: None,
        stmts: HashMap::new(),
        deprecate_eof: caps.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF),
        out: BytesMut::with_capacity(16 * 1024),
        cseq: 0,
        row: Vec::new(),
        scratch: Vec::new(),
        clean: true,
        shapes: ShapeCache::new(),
        facts: std::sync::Mutex::new(gate_sql::FactsCache::new()),
    };
    // Ends the session from outside: gateway shutdown, or an operator's termination.
    let pipeline_shutdown = handler.pipeline.shutdown_signal();
    let shutdown = async move {
        tokio::select! {
            _ = pipeline_shutdown => ("Gate is shutting down".to_string(), "gateway shutdown"),
            why = session.terminated() => (why, "terminated by an operator"),
        }
    };
    tokio::pin!(shutdown);
    let reason = loop {
        let cmd = tokio::select! {
            p = packet::read_packet(&mut r.client, &mut r.cbuf, MAX_CLIENT_PACKET) => p,
            (why, end) = &mut shutdown => {
                r.cseq = 0;
                r.send_err(1927, "08S01", &format!("Connection killed: {why}")).await;
                break end;
            }
        };
        let cmd = match cmd {
            Ok(p) => p,
            Err(PacketError::Closed) | Err(PacketError::Io(_)) => break "client disconnected",
            Err(e) => {
                r.cseq = 0;
                r.send_err(
                    1156,
                    "08S01",
                    &format!("Got packets out of order or invalid: {e}"),
                )
                .await;
                break "client protocol violation";
            }
        };
        r.cseq = cmd.seq.wrapping_add(cmd.chunks);
        match r.command(cmd).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::End(reason)) => break reason,
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "upstream connection ended");
                r.clean = false;
                r.send_err(
                    2013,
                    "HY000",
                    &format!("Gate lost the upstream connection: {e}"),
                )
                .await;
                break "upstream connection lost";
            }
        }
    };
    // Reuse the upstream only if the last exchange completed and it resets cleanly.
    if let Some(mut up) = r.up.take()
        && r.clean
        && matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), up.get_mut().reset()).await,
            Ok(Ok(()))
        )
    {
        up.release();
    }
    reason
}

impl Relay<'_> {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            // With TLS, records can stay buffered in rustls until flushed.
            self.client.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    fn queue(&mut self, payload: &[u8]) {
        packet::put_packet(&mut self.out, &mut self.cseq, payload);
    }

    async fn send_err(&mut self, code: u16, state: &str, message: &str) {
        let p = packet::err_payload(code, state, message);
        self.queue(&p);
        let _ = self.flush().await;
    }

    async fn ensure_upstream(&mut self) -> Result<bool, PacketError> {
        if self.up.is_some() {
            return Ok(true);
        }
        match self.handler.assign_upstream(self.resource, self.caps).await {
            Ok(u) => {
                self.up = Some(u);
                Ok(true)
            }
            Err(message) => {
                self.send_err(2003, "HY000", &message).await;
                Ok(false)
            }
        }
    }

    async fn forward(&mut self, payload: &[u8]) -> Result<(), PacketError> {
        let up = self.up.as_mut().expect("ensured").get_mut();
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        let mut seq = 0;
        packet::put_packet(&mut out, &mut seq, payload);
        up.stream.write_all(&out).await?;
        Ok(())
    }

    async fn read_upstream(&mut self) -> Result<Packet, PacketError> {
        let up = self.up.as_mut().expect("ensured").get_mut();
        // Flush what the client should already see before waiting on the upstream.
        if up.rbuf.len() < 4 && !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            self.client.flush().await?;
            self.out.clear();
        }
        let up = self.up.as_mut().expect("ensured").get_mut();
        packet::read_packet(&mut up.stream, &mut up.rbuf, MAX_UPSTREAM_PACKET).await
    }

    async fn command(&mut self, cmd: Packet) -> Result<Flow, PacketError> {
        let Some(&code) = cmd.payload.first() else {
            self.send_err(1047, "08S01", "Unknown command").await;
            return Ok(Flow::Continue);
        };
        match code {
            COM_QUIT => return Ok(Flow::End("client quit")),
            COM_CHANGE_USER => {
                self.refuse("COM_CHANGE_USER", "COM_CHANGE_USER is not allowed through Gate: the upstream identity is the gateway's").await;
            }
            0x12 | 0x13 | 0x14 | 0x15 | 0x1e => {
                self.refuse(
                    "replication command",
                    "replication commands are not allowed through Gate",
                )
                .await;
            }
            COM_QUERY => self.query(&cmd.payload[1..]).await?,
            COM_STMT_PREPARE => self.prepare(&cmd.payload[1..]).await?,
            COM_STMT_EXECUTE => self.execute(&cmd.payload).await?,
            COM_STMT_FETCH => self.fetch(&cmd.payload).await?,
            COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => {
                if code == COM_STMT_CLOSE
                    && let Some(id) = stmt_id(&cmd.payload)
                {
                    self.stmts.remove(&id);
                }
                // No response for these.
                if self.ensure_upstream().await? {
                    self.forward(&cmd.payload).await?;
                }
            }
            COM_INIT_DB => {
                let db = String::from_utf8_lossy(&cmd.payload[1..]).into_owned();
                let facts = other_facts(format!("USE {db}"));
                let decision = self.session.decide(&facts).await;
                if decision.is_block() {
                    self.send_block(&decision).await;
                } else if self.ensure_upstream().await? {
                    self.forward(&cmd.payload).await?;
                    let p = self.read_upstream().await?;
                    self.queue(&p.payload);
                    self.flush().await?;
                }
            }
            COM_FIELD_LIST => {
                if self.ensure_upstream().await? {
                    self.forward(&cmd.payload).await?;
                    loop {
                        let p = self.read_upstream().await?;
                        self.queue(&p.payload);
                        if p.payload.first() == Some(&0xff) || packet::is_terminator(&p.payload) {
                            break;
                        }
                    }
                    self.flush().await?;
                }
            }
            COM_PING | COM_STATISTICS | COM_SET_OPTION | COM_RESET_CONNECTION | COM_STMT_RESET => {
                if code == COM_RESET_CONNECTION {
                    self.stmts.clear();
                }
                if self.ensure_upstream().await? {
                    self.forward(&cmd.payload).await?;
                    let p = self.read_upstream().await?;
                    self.queue(&p.payload);
                    self.flush().await?;
                }
            }
            _ => {
                self.send_err(1047, "08S01", "Unknown or unsupported command")
                    .await
            }
        }
        Ok(Flow::Continue)
    }

    /// Refuses a command that would bypass the gateway; audited like a policy block.
    async fn refuse(&mut self, what: &str, reason: &str) {
        let facts = other_facts(what.to_string());
        let decision = self.session.deny(&facts, reason).await;
        self.record(&facts, &decision, 0, Instant::now(), None)
            .await;
        self.send_block(&decision).await;
    }

    async fn send_block(&mut self, decision: &Decision) {
        self.send_err(
            1227,
            "42000",
            &format!("Access denied: {}", decision.block_reason()),
        )
        .await;
    }

    async fn record(
        &self,
        facts: &QueryFacts,
        decision: &Decision,
        rows: u64,
        started: Instant,
        error: Option<(String, String)>,
    ) {
        self.session
            .record(
                facts,
                decision,
                RequestOutcome {
                    rows,
                    duration: started.elapsed(),
                    error,
                },
            )
            .await;
    }

    /// Decides every statement of a SQL text; returns facts+decisions and what to send.
    async fn decide_text(
        &self,
        text: &str,
    ) -> (
        Vec<(Arc<QueryFacts>, Arc<Decision>)>,
        Option<Decision>,
        Option<String>,
    ) {
        let facts = self
            .facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .analyze(text, SqlDialect::Mysql);
        let mut stmts = Vec::with_capacity(facts.len().max(1));
        let mut blocked = None;
        let mut rewrite = false;
        for f in facts {
            let d = self.session.decide(&f).await;
            if d.is_block() && blocked.is_none() {
                blocked = Some(d.clone());
            }
            rewrite |= d.action == Action::Rewrite && d.query.is_some();
            stmts.push((f, Arc::new(d)));
        }
        if stmts.is_empty() {
            stmts.push((
                Arc::new(other_facts(text.trim().to_string())),
                Arc::new(Decision::allow()),
            ));
        }
        let rewritten = (rewrite && blocked.is_none()).then(|| {
            stmts
                .iter()
                .map(|(f, d)| match (&d.action, &d.query) {
                    (Action::Rewrite, Some(q)) => q.as_str(),
                    _ => &*f.statement,
                })
                .collect::<Vec<_>>()
                .join(";\n")
        });
        (stmts, blocked, rewritten)
    }

    async fn query(&mut self, sql: &[u8]) -> Result<(), PacketError> {
        let text = String::from_utf8_lossy(sql).into_owned();
        if is_load_data_local(&text) {
            self.refuse(&text, "LOAD DATA LOCAL INFILE is not allowed through Gate: the server would read files from the client's machine").await;
            return Ok(());
        }
        let started = Instant::now();
        let (stmts, blocked, rewritten) = self.decide_text(&text).await;
        if let Some(d) = blocked {
            for (f, dd) in &stmts {
                self.record(f, dd, 0, started, None).await;
            }
            self.send_block(&d).await;
            return Ok(());
        }
        if !self.ensure_upstream().await? {
            return Ok(());
        }
        match rewritten {
            Some(q) => {
                let mut p = vec![COM_QUERY];
                p.extend_from_slice(q.as_bytes());
                self.forward(&p).await?;
            }
            None => {
                let mut p = Vec::with_capacity(sql.len() + 1);
                p.push(COM_QUERY);
                p.extend_from_slice(sql);
                self.forward(&p).await?;
            }
        }
        self.results(RowFormat::Text, &stmts, started, None).await
    }

    async fn prepare(&mut self, sql: &[u8]) -> Result<(), PacketError> {
        let text = String::from_utf8_lossy(sql).into_owned();
        let started = Instant::now();
        let (mut stmts, blocked, rewritten) = self.decide_text(&text).await;
        if let Some(d) = blocked {
            for (f, dd) in &stmts {
                self.record(f, dd, 0, started, None).await;
            }
            self.send_block(&d).await;
            return Ok(());
        }
        if !self.ensure_upstream().await? {
            return Ok(());
        }
        let mut p = vec![COM_STMT_PREPARE];
        p.extend_from_slice(rewritten.as_deref().map(str::as_bytes).unwrap_or(sql));
        self.forward(&p).await?;
        let first = self.read_upstream().await?;
        self.queue(&first.payload);
        if first.payload.first() != Some(&0x00) || first.payload.len() < 12 {
            self.flush().await?;
            return Ok(()); // ERR: nothing prepared
        }
        let id = u32::from_le_bytes(first.payload[1..5].try_into().expect("4 bytes"));
        let columns = u16::from_le_bytes([first.payload[5], first.payload[6]]) as usize;
        let params = u16::from_le_bytes([first.payload[7], first.payload[8]]) as usize;
        for count in [params, columns] {
            for _ in 0..count {
                let p = self.read_upstream().await?;
                self.queue(&p.payload);
            }
            if count > 0 && !self.deprecate_eof {
                let p = self.read_upstream().await?;
                self.queue(&p.payload);
            }
        }
        self.flush().await?;
        let (facts, decision) = stmts.swap_remove(0);
        self.stmts.insert(
            id,
            Stmt {
                facts,
                decision,
                shape: None,
            },
        );
        Ok(())
    }

    async fn execute(&mut self, payload: &[u8]) -> Result<(), PacketError> {
        let started = Instant::now();
        let id = stmt_id(payload).unwrap_or(u32::MAX);
        let (facts, decision) = match self.stmts.get(&id) {
            Some(s) => (s.facts.clone(), s.decision.clone()),
            None => (
                Arc::new(other_facts(String::new())),
                Arc::new(Decision::allow()),
            ),
        };
        if !self.ensure_upstream().await? {
            return Ok(());
        }
        self.forward(payload).await?;
        self.results(RowFormat::Binary, &[(facts, decision)], started, Some(id))
            .await
    }

    async fn fetch(&mut self, payload: &[u8]) -> Result<(), PacketError> {
        let id = stmt_id(payload).unwrap_or(u32::MAX);
        let shape = self.stmts.get(&id).and_then(|s| s.shape.clone());
        if !self.ensure_upstream().await? {
            return Ok(());
        }
        self.forward(payload).await?;
        let mut suppressed = shape.as_ref().and_then(|s| s.refused.clone());
        loop {
            let p = self.read_upstream().await?;
            if p.payload.first() == Some(&0xff) || packet::is_terminator(&p.payload) {
                match suppressed.take() {
                    Some(reason) if p.payload.first() != Some(&0xff) => {
                        let e =
                            packet::err_payload(1227, "42000", &format!("Access denied: {reason}"));
                        self.queue(&e);
                    }
                    _ => self.queue(&p.payload),
                }
                break;
            }
            self.row(
                &p.payload,
                shape.as_deref(),
                RowFormat::Binary,
                &mut suppressed,
            )?;
        }
        self.flush().await?;
        Ok(())
    }

    /// Queues one row, masked per the shape; a refused shape swallows it.
    fn row(
        &mut self,
        payload: &[u8],
        shape: Option<&Shape>,
        format: RowFormat,
        suppressed: &mut Option<String>,
    ) -> Result<(), PacketError> {
        let Some(shape) = shape else {
            return Err(PacketError::Invalid(
                "row without a known result shape; Gate lost track of the protocol state",
            ));
        };
        if let Some(reason) = &shape.refused {
            suppressed.get_or_insert_with(|| reason.clone());
            return Ok(());
        }
        if shape.plan.is_empty() {
            self.queue(payload);
            return Ok(());
        }
        let mut row = std::mem::take(&mut self.row);
        let masker = self.session.masker();
        match format {
            RowFormat::Text => {
                rows::mask_text_row(payload, &shape.plan, masker, &mut row, &mut self.scratch)?
            }
            RowFormat::Binary => rows::mask_binary_row(
                payload,
                &shape.plan,
                &shape.types,
                masker,
                &mut row,
                &mut self.scratch,
            )?,
        }
        self.queue(&row);
        self.row = row;
        Ok(())
    }

    /// Relays the response to a COM_QUERY or COM_STMT_EXECUTE: OK, ERR, or one or more result
    /// sets, masking rows and recording each statement.
    async fn results(
        &mut self,
        format: RowFormat,
        stmts: &[(Arc<QueryFacts>, Arc<Decision>)],
        started: Instant,
        stmt: Option<u32>,
    ) -> Result<(), PacketError> {
        let mut idx = 0usize;
        // Set when post_request refused a result: the rest of the response is drained and
        // the client gets an error in its place.
        let mut refused: Option<String> = None;
        loop {
            let (facts, decision) = &stmts[idx.min(stmts.len() - 1)];
            let first = self.read_upstream().await?;
            match first.payload.first().copied() {
                Some(0x00) => {
                    if refused.is_none() {
                        self.queue(&first.payload);
                    }
                    self.record(facts, decision, 0, started, None).await;
                    if packet::ok_status(&first.payload) & packet::SERVER_MORE_RESULTS_EXISTS == 0 {
                        break;
                    }
                }
                Some(0xff) => {
                    let (code, state, message) = packet::parse_err(&first.payload);
                    self.queue(&first.payload);
                    self.record(
                        facts,
                        decision,
                        0,
                        started,
                        Some((format!("{code} {state}"), message)),
                    )
                    .await;
                    break;
                }
                Some(0xfb) => {
                    // LOCAL INFILE request: never let the server read the client's files.
                    // Send an empty file, swallow the answer, and tell the client why.
                    self.clean = false;
                    let up = self.up.as_mut().expect("ensured").get_mut();
                    let mut out = BytesMut::new();
                    let mut seq = first.seq.wrapping_add(1);
                    packet::put_packet(&mut out, &mut seq, &[]);
                    up.stream.write_all(&out).await?;
                    let _ = self.read_upstream().await?;
                    self.clean = true;
                    let e = packet::err_payload(
                        1148,
                        "42000",
                        "LOAD DATA LOCAL INFILE is not allowed through Gate",
                    );
                    self.queue(&e);
                    break;
                }
                _ => {
                    let (count, _) = packet::lenenc_int(&first.payload)
                        .ok_or(PacketError::Invalid("column count"))?;
                    let mut held = vec![first.payload];
                    for _ in 0..count {
                        held.push(self.read_upstream().await?.payload);
                    }
                    // One plan per result shape (the column definitions) and kind of query.
                    let defs_bytes = &held[1..=count as usize];
                    let key = shape_key(defs_bytes.iter().map(|d| &d[..]), Some(facts));
                    let shape = match self.shapes.get(self.session, key) {
                        Some(shape) => shape,
                        None => {
                            let defs = defs_bytes
                                .iter()
                                .map(|d| packet::parse_column_def(d))
                                .collect::<Result<Vec<_>, _>>()?;
                            let shape = self.plan(facts, &defs).await;
                            self.shapes.insert(self.session, key, shape.clone());
                            shape
                        }
                    };
                    if !self.deprecate_eof {
                        held.push(self.read_upstream().await?.payload);
                    }
                    if refused.is_none() && shape.refused.is_none() {
                        for p in &held {
                            self.queue(p);
                        }
                    } else if refused.is_none() {
                        refused = shape.refused.clone();
                    }
                    // A cursor was opened: rows come with COM_STMT_FETCH.
                    let eof_status = held
                        .last()
                        .filter(|_| !self.deprecate_eof)
                        .map(|p| packet::terminator_status(p, false))
                        .unwrap_or(0);
                    if let Some(id) = stmt
                        && let Some(s) = self.stmts.get_mut(&id)
                    {
                        s.shape = Some(shape.clone());
                    }
                    if eof_status & packet::SERVER_STATUS_CURSOR_EXISTS != 0 {
                        break;
                    }
                    let mut rows = 0u64;
                    loop {
                        let p = self.read_upstream().await?;
                        if p.payload.first() == Some(&0xff) {
                            let (code, state, message) = packet::parse_err(&p.payload);
                            self.queue(&p.payload);
                            self.record(
                                facts,
                                decision,
                                rows,
                                started,
                                Some((format!("{code} {state}"), message)),
                            )
                            .await;
                            self.flush().await?;
                            return Ok(());
                        }
                        if packet::is_terminator(&p.payload) {
                            let status = packet::terminator_status(&p.payload, self.deprecate_eof);
                            if refused.is_none() {
                                self.queue(&p.payload);
                            }
                            self.record(facts, decision, rows, started, None).await;
                            if status & packet::SERVER_STATUS_CURSOR_EXISTS != 0
                                || status & packet::SERVER_MORE_RESULTS_EXISTS == 0
                            {
                                self.finish_refused(&mut refused);
                                self.flush().await?;
                                return Ok(());
                            }
                            break;
                        }
                        rows += 1;
                        if refused.is_none() {
                            let mut none = None;
                            self.row(&p.payload, Some(&shape), format, &mut none)?;
                        }
                    }
                }
            }
            idx += 1;
        }
        self.finish_refused(&mut refused);
        self.flush().await?;
        Ok(())
    }

    fn finish_refused(&mut self, refused: &mut Option<String>) {
        if let Some(reason) = refused.take() {
            let e = packet::err_payload(1227, "42000", &format!("Access denied: {reason}"));
            self.queue(&e);
        }
    }

    async fn plan(&self, facts: &QueryFacts, defs: &[packet::ColumnDef]) -> Arc<Shape> {
        let columns: Vec<ColumnFacts> = defs
            .iter()
            .map(|d| ColumnFacts {
                name: d.name.clone(),
                table: (!d.table.is_empty()).then(|| d.table.clone()),
                type_name: None,
            })
            .collect();
        let types = defs.iter().map(|d| d.column_type).collect();
        match self.session.plan_masks(Some(facts), &columns).await {
            Ok(plan) => {
                // An alias must not hide a masked column: plan on original names too.
                let originals: Vec<ColumnFacts> = defs
                    .iter()
                    .map(|d| ColumnFacts {
                        name: if d.org_name.is_empty() {
                            d.name.clone()
                        } else {
                            d.org_name.clone()
                        },
                        table: None,
                        type_name: None,
                    })
                    .collect();
                let plan = if defs
                    .iter()
                    .any(|d| !d.org_name.is_empty() && d.org_name != d.name)
                {
                    match self.session.plan_masks(Some(facts), &originals).await {
                        Ok(by_origin) => plan.union(&by_origin),
                        Err(reason) => {
                            return Arc::new(Shape {
                                plan: MaskPlan::empty(),
                                types,
                                refused: Some(reason),
                            });
                        }
                    }
                } else {
                    plan
                };
                Arc::new(Shape {
                    plan,
                    types,
                    refused: None,
                })
            }
            Err(reason) => Arc::new(Shape {
                plan: MaskPlan::empty(),
                types,
                refused: Some(reason),
            }),
        }
    }
}

/// `LOAD DATA [LOW_PRIORITY|CONCURRENT] LOCAL INFILE …`, however it is spaced or cased.
fn is_load_data_local(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(5)
        .map(str::to_ascii_uppercase)
        .collect();
    words.first().map(String::as_str) == Some("LOAD")
        && words.get(1).map(String::as_str) == Some("DATA")
        && words.iter().any(|w| w == "LOCAL")
}

fn stmt_id(payload: &[u8]) -> Option<u32> {
    payload
        .get(1..5)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_data_local_is_recognised_however_written() {
        assert!(is_load_data_local(
            "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"
        ));
        assert!(is_load_data_local(
            "  load   data low_priority local infile 'x' into table t"
        ));
        assert!(is_load_data_local(
            "LOAD\nDATA\tCONCURRENT LOCAL INFILE 'x' INTO TABLE t"
        ));
        assert!(!is_load_data_local(
            "LOAD DATA INFILE '/tmp/x' INTO TABLE t"
        ));
        assert!(!is_load_data_local("SELECT 'LOAD DATA LOCAL'"));
    }
}
