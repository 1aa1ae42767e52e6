//! The post-login relay: client ⇄ upstream, intercepting only what policy and masking need.
//!
//! Two directions run concurrently inside one task (`select!`), sharing a small state behind
//! a `std::sync::Mutex` that is never held across an `.await`:
//! - client → upstream decodes Query, Parse, Bind, Describe, Execute, Close, Sync and
//!   FunctionCall; asks the session for a `pre_request` decision; forwards the original bytes,
//!   a rewritten statement, or — for a blocked one — a *poison* statement that fails upstream.
//!   The upstream's syntax error for the poison is then replaced by the gateway's 42501 error,
//!   so a block is answered in exactly the place and with exactly the protocol effects
//!   (aborted transaction, skip-until-Sync) a real server would produce.
//! - upstream → client follows the queue of requests in flight to know which statement each
//!   RowDescription/DataRow belongs to, plans masks once per row description and applies the
//!   plan to every DataRow, and records each finished statement.
//!
//! Output is batched: a direction writes when it has no further complete message buffered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use gate_core::{Action, ColumnFacts, Decision, QueryFacts, QueryType};
use gate_enforcement::MaskPlan;
use gate_pipeline::{RequestOutcome, Session, ShapeCache, shape_key};
use gate_sql::SqlDialect;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{self, Frame, MsgWriter, Reader, WireError};

/// Largest client message accepted (a big multi-row INSERT or COPY chunk fits easily).
pub const MAX_CLIENT_MESSAGE: usize = 256 << 20;

/// A result shape: the mask plan computed once per row description.
pub(crate) struct Shape {
    plan: MaskPlan,
    type_oids: Vec<u32>,
    /// Shared so a row of a simple query can borrow it without allocating.
    formats: Arc<[i16]>,
    /// Set when `post_request` refused this result: its rows never reach the client.
    refused: Option<String>,
}

type ShapeSlot = Arc<OnceLock<Arc<Shape>>>;

struct Stmt {
    facts: Arc<QueryFacts>,
    decision: Arc<Decision>,
    slot: ShapeSlot,
    described: bool,
}

struct Portal {
    facts: Arc<QueryFacts>,
    decision: Arc<Decision>,
    stmt_slot: ShapeSlot,
    slot: ShapeSlot,
    formats: Arc<[i16]>,
    described: bool,
}

/// Everything needed to attribute an Execute's rows, captured when the client sent it.
struct ExecCtx {
    facts: Arc<QueryFacts>,
    decision: Arc<Decision>,
    stmt_slot: ShapeSlot,
    portal_slot: ShapeSlot,
    formats: Arc<[i16]>,
    started: Instant,
    rows: u64,
}

struct SimpleStmt {
    facts: Arc<QueryFacts>,
    decision: Arc<Decision>,
}

struct SimpleQuery {
    stmts: Vec<SimpleStmt>,
    idx: usize,
    started: Instant,
    rows: u64,
    shape: Option<Arc<Shape>>,
    /// The poison token and block reason when the whole query was blocked.
    poison: Option<(String, String)>,
}

/// A request in flight, in the order the upstream will answer.
enum Pending {
    Simple(SimpleQuery),
    Parse {
        poison: Option<(String, String)>,
    },
    Bind,
    DescribeStatement {
        facts: Arc<QueryFacts>,
        slot: ShapeSlot,
    },
    DescribePortal {
        facts: Arc<QueryFacts>,
        slot: ShapeSlot,
        injected: bool,
    },
    Execute(ExecCtx),
    Close,
    Sync,
    FunctionCall {
        poison: (String, String),
    },
}

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    statements: ByName<Stmt>,
    portals: ByName<Portal>,
    tx_status: u8,
    poison_seq: u64,
    /// The upstream is in COPY FROM STDIN mode (CopyInResponse seen, the client's CopyDone or
    /// CopyFail not yet). PostgreSQL ignores Sync in that mode, so no answer will come for one.
    copy_in: bool,
}

/// Prepared statements or portals by name. The unnamed one, which extended-protocol clients
/// replace with every query, lives outside the map: no hashing or key copy per query.
struct ByName<T> {
    unnamed: Option<T>,
    named: HashMap<Box<[u8]>, T>,
}

impl<T> Default for ByName<T> {
    fn default() -> Self {
        ByName {
            unnamed: None,
            named: HashMap::new(),
        }
    }
}

impl<T> ByName<T> {
    fn get(&self, name: &[u8]) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn get_mut(&mut self, name: &[u8]) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    fn insert(&mut self, name: &[u8], value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name.into(), value);
        }
    }

    fn remove(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }
}

/// How the relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client sent Terminate or closed its side.
    ClientGone,
    /// A client protocol violation; the client gets FATAL 08P01.
    ClientError(String),
    /// The upstream closed or failed.
    UpstreamGone(String),
}

pub(crate) struct Relay<'a> {
    pub session: &'a Session,
    state: Mutex<State>,
    /// SQL facts of this session's statements, reused when only literals differ.
    facts: Mutex<gate_sql::FactsCache>,
    poison_prefix: String,
    /// Bind's most common result formats (none given; one code for all columns, text),
    /// shared by every portal that asks for them instead of allocated per Bind.
    default_formats: Arc<[i16]>,
    text_formats: Arc<[i16]>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_facts(m: &Mutex<gate_sql::FactsCache>) -> std::sync::MutexGuard<'_, gate_sql::FactsCache> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn other_facts(statement: String) -> Arc<QueryFacts> {
    Arc::new(QueryFacts {
        query_type: QueryType::Other,
        statement: statement.into(),
        tables: Vec::new(),
    })
}

impl<'a> Relay<'a> {
    pub fn new(session: &'a Session) -> Self {
        let nonce: u64 = rand::random();
        Relay {
            session,
            state: Mutex::new(State {
                tx_status: b'I',
                ..State::default()
            }),
            poison_prefix: format!("GATE_BLOCKED_{nonce:016x}_"),
            default_formats: Arc::from([]),
            text_formats: Arc::from([0]),
            facts: Mutex::new(gate_sql::FactsCache::new()),
        }
    }

    fn result_formats(&self, formats: Vec<i16>) -> Arc<[i16]> {
        match formats.as_slice() {
            [] => self.default_formats.clone(),
            [0] => self.text_formats.clone(),
            _ => formats.into(),
        }
    }

    /// True when nothing is in flight and no transaction is open, so the upstream can be
    /// reset and reused.
    pub fn upstream_reusable(&self) -> Option<u8> {
        let st = lock(&self.state);
        st.pending.is_empty().then_some(st.tx_status)
    }

    fn next_poison(&self, reason: &str) -> (String, String) {
        let mut st = lock(&self.state);
        st.poison_seq += 1;
        (
            format!("{}{}", self.poison_prefix, st.poison_seq),
            reason.to_string(),
        )
    }

    /// Decides a whole SQL text (one or more statements). Returns per-statement facts and
    /// decisions, and the combined outcome.
    async fn decide_text(&self, text: &str) -> (Vec<SimpleStmt>, TextOutcome) {
        let facts = lock_facts(&self.facts).analyze(text, SqlDialect::Postgres);
        let mut stmts = Vec::with_capacity(facts.len().max(1));
        let mut outcome = TextOutcome::Forward;
        for f in facts {
            let d = self.session.decide(&f).await;
            match d.action {
                Action::Block if !matches!(outcome, TextOutcome::Block(_)) => {
                    outcome = TextOutcome::Block(d.block_reason().to_string());
                }
                Action::Rewrite if matches!(outcome, TextOutcome::Forward) => {
                    outcome = TextOutcome::Rewrite;
                }
                _ => {}
            }
            stmts.push(SimpleStmt {
                facts: f,
                decision: Arc::new(d),
            });
        }
        if stmts.is_empty() {
            stmts.push(SimpleStmt {
                facts: other_facts(text.trim().to_string()),
                decision: Arc::new(Decision::allow()),
            });
        }
        (stmts, outcome)
    }

    async fn record_blocked(&self, stmts: &[SimpleStmt]) {
        for s in stmts {
            self.session
                .record(
                    &s.facts,
                    &s.decision,
                    RequestOutcome {
                        rows: 0,
                        duration: std::time::Duration::ZERO,
                        error: None,
                    },
                )
                .await;
        }
    }

    /// Client → upstream. Returns when the client terminates or misbehaves.
    pub async fn client_to_upstream<R, W>(
        &self,
        client: &mut R,
        upstream: &mut W,
        buf: &mut BytesMut,
    ) -> RelayEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::with_capacity(4096);
        loop {
            let frame = match wire::try_take_frame(buf, MAX_CLIENT_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if !out.is_empty() {
                        if let Err(e) = upstream.write_all(&out).await {
                            return RelayEnd::UpstreamGone(e.to_string());
                        }
                        out.clear();
                    }
                    match client.read_buf(buf).await {
                        Ok(0) | Err(_) => return RelayEnd::ClientGone,
                        Ok(_) => continue,
                    }
                }
                Err(e) => return RelayEnd::ClientError(e.to_string()),
            };
            let result = match frame.tag {
                b'Q' => self.on_query(frame, &mut out).await,
                b'P' => self.on_parse(frame, &mut out).await,
                b'B' => self.on_bind(frame, &mut out),
                b'D' => self.on_describe(frame, &mut out),
                b'E' => self.on_execute(frame, &mut out),
                b'C' => {
                    lock(&self.state).pending.push_back(Pending::Close);
                    self.on_close(&frame);
                    out.extend_from_slice(&frame.raw);
                    Ok(())
                }
                b'S' => {
                    let mut st = lock(&self.state);
                    if !st.copy_in {
                        st.pending.push_back(Pending::Sync);
                    }
                    out.extend_from_slice(&frame.raw);
                    Ok(())
                }
                b'c' | b'f' => {
                    lock(&self.state).copy_in = false;
                    out.extend_from_slice(&frame.raw);
                    Ok(())
                }
                b'X' => {
                    if !out.is_empty() {
                        let _ = upstream.write_all(&out).await;
                    }
                    return RelayEnd::ClientGone;
                }
                b'F' => {
                    let reason = "the fast-path function call protocol is not allowed through Gate; call the function in SQL";
                    let facts = other_facts("fast-path function call".to_string());
                    let decision = self.session.deny(&facts, reason).await;
                    self.session
                        .record(
                            &facts,
                            &decision,
                            RequestOutcome {
                                rows: 0,
                                duration: std::time::Duration::ZERO,
                                error: None,
                            },
                        )
                        .await;
                    let poison = self.next_poison(reason);
                    wire::put_query(&mut out, &poison.0);
                    lock(&self.state)
                        .pending
                        .push_back(Pending::FunctionCall { poison });
                    Ok(())
                }
                // Flush, CopyData, CopyDone, CopyFail and anything else: untouched.
                _ => {
                    out.extend_from_slice(&frame.raw);
                    Ok(())
                }
            };
            if let Err(e) = result {
                return RelayEnd::ClientError(e.to_string());
            }
        }
    }

    async fn on_query(&self, frame: Frame, out: &mut BytesMut) -> Result<(), WireError> {
        let text_bytes = Reader::new(frame.body()).cstr()?;
        let text = String::from_utf8_lossy(text_bytes);
        let (stmts, outcome) = self.decide_text(&text).await;
        let mut poison = None;
        match outcome {
            TextOutcome::Forward => out.extend_from_slice(&frame.raw),
            TextOutcome::Rewrite => wire::put_query(out, &rewritten_text(&stmts)),
            TextOutcome::Block(reason) => {
                let p = self.next_poison(&reason);
                wire::put_query(out, &p.0);
                poison = Some(p);
                self.record_blocked(&stmts).await;
            }
        }
        lock(&self.state)
            .pending
            .push_back(Pending::Simple(SimpleQuery {
                stmts,
                idx: 0,
                started: Instant::now(),
                rows: 0,
                shape: None,
                poison,
            }));
        Ok(())
    }

    async fn on_parse(&self, frame: Frame, out: &mut BytesMut) -> Result<(), WireError> {
        let mut r = Reader::new(frame.body());
        let name = r.cstr()?;
        let query = r.cstr()?;
        let param_types = r.remaining();
        let text = String::from_utf8_lossy(query);
        let (mut stmts, outcome) = self.decide_text(&text).await;
        let mut poison = None;
        match &outcome {
            TextOutcome::Forward => out.extend_from_slice(&frame.raw),
            TextOutcome::Rewrite => {
                MsgWriter::begin(out, b'P')
                    .cstr(name)
                    .cstr(rewritten_text(&stmts).as_bytes())
                    .bytes(param_types)
                    .finish();
            }
            TextOutcome::Block(reason) => {
                let p = self.next_poison(reason);
                MsgWriter::begin(out, b'P')
                    .cstr(name)
                    .cstr(p.0.as_bytes())
                    .i16(0)
                    .finish();
                poison = Some(p);
                self.record_blocked(&stmts).await;
            }
        }
        // A prepared statement holds one statement; keep the most restrictive decision.
        let first = stmts.swap_remove(0);
        let decision = match outcome {
            TextOutcome::Block(reason) => Arc::new(Decision::block(reason)),
            _ => first.decision,
        };
        let mut st = lock(&self.state);
        if name.is_empty() || !st.statements.contains(name) {
            st.statements.insert(
                name,
                Stmt {
                    facts: first.facts,
                    decision,
                    slot: ShapeSlot::default(),
                    described: false,
                },
            );
        }
        st.pending.push_back(Pending::Parse { poison });
        Ok(())
    }

    fn on_bind(&self, frame: Frame, out: &mut BytesMut) -> Result<(), WireError> {
        let info = wire::parse_bind(frame.body())?;
        let formats = self.result_formats(info.result_formats);
        let mut st = lock(&self.state);
        let portal = match st.statements.get(info.statement) {
            Some(s) => Portal {
                facts: s.facts.clone(),
                decision: s.decision.clone(),
                stmt_slot: s.slot.clone(),
                slot: ShapeSlot::default(),
                formats,
                described: s.described,
            },
            // Unknown statement: the upstream will answer with an error; nothing to attribute.
            None => Portal {
                facts: other_facts(String::new()),
                decision: Arc::new(Decision::allow()),
                stmt_slot: ShapeSlot::default(),
                slot: ShapeSlot::default(),
                formats,
                described: false,
            },
        };
        st.portals.insert(info.portal, portal);
        st.pending.push_back(Pending::Bind);
        out.extend_from_slice(&frame.raw);
        Ok(())
    }

    fn on_describe(&self, frame: Frame, out: &mut BytesMut) -> Result<(), WireError> {
        let mut r = Reader::new(frame.body());
        let kind = r.u8()?;
        let name = r.cstr()?;
        let mut st = lock(&self.state);
        let pending = if kind == b'S' {
            match st.statements.get_mut(name) {
                Some(s) => {
                    s.described = true;
                    Pending::DescribeStatement {
                        facts: s.facts.clone(),
                        slot: s.slot.clone(),
                    }
                }
                None => Pending::DescribeStatement {
                    facts: other_facts(String::new()),
                    slot: ShapeSlot::default(),
                },
            }
        } else {
            match st.portals.get_mut(name) {
                Some(p) => {
                    p.described = true;
                    Pending::DescribePortal {
                        facts: p.facts.clone(),
                        slot: p.slot.clone(),
                        injected: false,
                    }
                }
                None => Pending::DescribePortal {
                    facts: other_facts(String::new()),
                    slot: ShapeSlot::default(),
                    injected: false,
                },
            }
        };
        st.pending.push_back(pending);
        out.extend_from_slice(&frame.raw);
        Ok(())
    }

    fn on_execute(&self, frame: Frame, out: &mut BytesMut) -> Result<(), WireError> {
        let mut r = Reader::new(frame.body());
        let name = r.cstr()?;
        let mut st = lock(&self.state);
        let Some(p) = st.portals.get(name) else {
            drop(st);
            lock(&self.state)
                .pending
                .push_back(Pending::Execute(ExecCtx {
                    facts: other_facts(String::new()),
                    decision: Arc::new(Decision::allow()),
                    stmt_slot: ShapeSlot::default(),
                    portal_slot: ShapeSlot::default(),
                    formats: Arc::from([]),
                    started: Instant::now(),
                    rows: 0,
                }));
            out.extend_from_slice(&frame.raw);
            return Ok(());
        };
        let ctx = ExecCtx {
            facts: p.facts.clone(),
            decision: p.decision.clone(),
            stmt_slot: p.stmt_slot.clone(),
            portal_slot: p.slot.clone(),
            formats: p.formats.clone(),
            started: Instant::now(),
            rows: 0,
        };
        if !p.described {
            // The client never asked for this result's shape, but masking needs it: ask the
            // upstream ourselves and keep the answer from the client.
            let injected = Pending::DescribePortal {
                facts: p.facts.clone(),
                slot: p.slot.clone(),
                injected: true,
            };
            st.pending.push_back(injected);
            MsgWriter::begin(out, b'D').u8(b'P').cstr(name).finish();
        }
        st.pending.push_back(Pending::Execute(ctx));
        out.extend_from_slice(&frame.raw);
        Ok(())
    }

    fn on_close(&self, frame: &Frame) {
        let mut r = Reader::new(frame.body());
        let (Ok(kind), Ok(name)) = (r.u8(), r.cstr()) else {
            return;
        };
        let mut st = lock(&self.state);
        if kind == b'S' {
            st.statements.remove(name);
        } else {
            st.portals.remove(name);
        }
    }

    /// Upstream → client. Returns when the upstream closes or fails.
    pub async fn upstream_to_client<R, W>(
        &self,
        upstream: &mut R,
        client: &mut W,
        buf: &mut BytesMut,
    ) -> RelayEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::with_capacity(16 * 1024);
        let mut scratch = Vec::new();
        let mut suppressed: Option<String> = None;
        let mut shapes = ShapeCache::new();
        loop {
            let frame = match wire::try_take_frame(buf, crate::upstream::MAX_UPSTREAM_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if !out.is_empty() {
                        // `flush` matters with TLS: rustls may keep encrypted records
                        // buffered when the socket is full, and nothing else would push
                        // them out before the next write — the client would wait forever.
                        if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                            return RelayEnd::ClientGone;
                        }
                        out.clear();
                        // Don't let one huge result keep a huge buffer around.
                        if out.capacity() > 1 << 20 {
                            out = BytesMut::with_capacity(16 * 1024);
                        }
                    }
                    match upstream.read_buf(buf).await {
                        Ok(0) => {
                            return RelayEnd::UpstreamGone("upstream closed the connection".into());
                        }
                        Err(e) => return RelayEnd::UpstreamGone(e.to_string()),
                        Ok(_) => continue,
                    }
                }
                Err(e) => return RelayEnd::UpstreamGone(e.to_string()),
            };
            let fatal = frame.tag == b'E' && wire::parse_error(frame.body()).severity == "FATAL";
            if let Err(e) = self
                .on_upstream_message(frame, &mut out, &mut scratch, &mut suppressed, &mut shapes)
                .await
            {
                return RelayEnd::UpstreamGone(e.to_string());
            }
            if fatal {
                let _ = client.write_all(&out).await;
                let _ = client.flush().await;
                return RelayEnd::UpstreamGone("upstream ended the session".into());
            }
        }
    }

    async fn on_upstream_message(
        &self,
        frame: Frame,
        out: &mut BytesMut,
        scratch: &mut Vec<u8>,
        suppressed: &mut Option<String>,
        shapes: &mut ShapeCache<Arc<Shape>>,
    ) -> Result<(), WireError> {
        match frame.tag {
            b'D' => {
                let ctx = {
                    let mut st = lock(&self.state);
                    match st.pending.front_mut() {
                        Some(Pending::Simple(q)) => {
                            q.rows += 1;
                            q.shape.clone().map(|s| {
                                let f = s.formats.clone();
                                (s, f)
                            })
                        }
                        Some(Pending::Execute(x)) => {
                            x.rows += 1;
                            x.portal_slot
                                .get()
                                .or_else(|| x.stmt_slot.get())
                                .map(|s| (s.clone(), x.formats.clone()))
                        }
                        _ => None,
                    }
                };
                // A row the relay cannot attribute means it lost track of the protocol:
                // passing it on might skip a mask, so end the session instead (fail closed).
                let Some(ctx) = ctx else {
                    return Err(WireError::Invalid(
                        "data row without a known row description; Gate lost track of the protocol state",
                    ));
                };
                match ctx {
                    (s, _) if s.refused.is_some() => {
                        if suppressed.is_none() {
                            *suppressed = s.refused.clone();
                        }
                    }
                    (s, formats) if !s.plan.is_empty() => crate::rowmask::mask_data_row(
                        frame.body(),
                        &s.plan,
                        &s.type_oids,
                        &formats,
                        self.session.masker(),
                        out,
                        scratch,
                    )?,
                    _ => out.extend_from_slice(&frame.raw),
                }
            }
            b'T' => {
                let target = {
                    let st = lock(&self.state);
                    match st.pending.front() {
                        Some(Pending::Simple(q)) => Some((
                            ShapeTarget::Simple,
                            q.stmts[q.idx.min(q.stmts.len() - 1)].facts.clone(),
                        )),
                        Some(Pending::DescribeStatement { facts, slot }) => {
                            Some((ShapeTarget::Slot(slot.clone(), false), facts.clone()))
                        }
                        Some(Pending::DescribePortal {
                            facts,
                            slot,
                            injected,
                            ..
                        }) => Some((ShapeTarget::Slot(slot.clone(), *injected), facts.clone())),
                        _ => None,
                    }
                };
                let Some((target, facts)) = target else {
                    return Err(WireError::Invalid(
                        "row description for no known request; Gate lost track of the protocol state",
                    ));
                };
                // One plan per result shape: the same row description for the same kind of
                // query is planned once per session (and again after a policy reload).
                let key = shape_key([frame.body()], Some(&facts));
                let shape = match shapes.get(self.session, key) {
                    Some(shape) => shape,
                    None => {
                        let shape = self.plan_shape(frame.body(), &facts).await?;
                        shapes.insert(self.session, key, shape.clone());
                        shape
                    }
                };
                let mut st = lock(&self.state);
                match target {
                    ShapeTarget::Simple => {
                        if let Some(reason) = &shape.refused {
                            // Nothing of this result reaches the client; its end becomes an error.
                            *suppressed = Some(reason.clone());
                        } else {
                            out.extend_from_slice(&frame.raw);
                        }
                        if let Some(Pending::Simple(q)) = st.pending.front_mut() {
                            q.shape = Some(shape);
                        }
                    }
                    ShapeTarget::Slot(slot, injected) => {
                        let _ = slot.set(shape);
                        st.pending.pop_front();
                        if !injected {
                            out.extend_from_slice(&frame.raw);
                        }
                    }
                }
            }
            b'C' | b'I' | b's' => {
                if let Some(reason) = suppressed.take() {
                    wire::put_error(out, "ERROR", "42501", &reason);
                } else {
                    out.extend_from_slice(&frame.raw);
                }
                self.finish_statement(None).await;
            }
            b'E' => {
                let e = wire::parse_error(frame.body());
                let poison = {
                    let st = lock(&self.state);
                    match st.pending.front() {
                        Some(Pending::Simple(SimpleQuery {
                            poison: Some(p), ..
                        }))
                        | Some(Pending::Parse { poison: Some(p) })
                        | Some(Pending::FunctionCall { poison: p }) => Some(p.clone()),
                        _ => None,
                    }
                };
                match poison {
                    Some((token, reason)) if e.message.contains(&token) => {
                        wire::put_error(out, "ERROR", "42501", &reason);
                    }
                    _ => out.extend_from_slice(&frame.raw),
                }
                suppressed.take();
                let error = (e.code.to_string(), e.message.to_string());
                self.finish_statement(Some(error)).await;
                // In the extended protocol the upstream now skips everything up to Sync
                // (and an error ends COPY FROM STDIN mode: the next Sync is answered again).
                let mut st = lock(&self.state);
                st.copy_in = false;
                if !matches!(
                    st.pending.front(),
                    Some(Pending::Simple(_)) | Some(Pending::FunctionCall { .. })
                ) {
                    while let Some(p) = st.pending.front() {
                        if matches!(p, Pending::Sync) {
                            break;
                        }
                        st.pending.pop_front();
                    }
                }
            }
            b'Z' => {
                let mut st = lock(&self.state);
                st.tx_status = frame.body().first().copied().unwrap_or(b'I');
                // Everything up to and including the Query/Sync this answers is done.
                while let Some(p) = st.pending.pop_front() {
                    if matches!(
                        p,
                        Pending::Simple(_) | Pending::Sync | Pending::FunctionCall { .. }
                    ) {
                        break;
                    }
                }
                out.extend_from_slice(&frame.raw);
            }
            b'1' | b'2' | b'3' => {
                let mut st = lock(&self.state);
                if matches!(
                    st.pending.front(),
                    Some(Pending::Parse { .. }) | Some(Pending::Bind) | Some(Pending::Close)
                ) {
                    st.pending.pop_front();
                }
                out.extend_from_slice(&frame.raw);
            }
            b'n' => {
                let mut st = lock(&self.state);
                let injected = match st.pending.front() {
                    Some(Pending::DescribePortal { slot, injected, .. }) => {
                        let _ = slot.set(Arc::new(Shape::empty()));
                        *injected
                    }
                    Some(Pending::DescribeStatement { slot, .. }) => {
                        let _ = slot.set(Arc::new(Shape::empty()));
                        false
                    }
                    _ => false,
                };
                if matches!(
                    st.pending.front(),
                    Some(Pending::DescribePortal { .. }) | Some(Pending::DescribeStatement { .. })
                ) {
                    st.pending.pop_front();
                }
                if !injected {
                    out.extend_from_slice(&frame.raw);
                }
            }
            b'H' => {
                // COPY … TO STDOUT: its data cannot be masked column by column.
                let facts = {
                    let st = lock(&self.state);
                    match st.pending.front() {
                        Some(Pending::Simple(q)) => {
                            Some(q.stmts[q.idx.min(q.stmts.len() - 1)].facts.clone())
                        }
                        Some(Pending::Execute(x)) => Some(x.facts.clone()),
                        _ => None,
                    }
                };
                match self.session.check_opaque_result(facts.as_deref()).await {
                    Ok(()) => out.extend_from_slice(&frame.raw),
                    Err(reason) => *suppressed = Some(reason),
                }
            }
            b'G' => {
                // COPY FROM STDIN begins. Every Sync the client pipelined after the COPY was
                // (and until its CopyDone will be) ignored by the server: forget them, or all
                // later answers would be attributed to the wrong request.
                let mut st = lock(&self.state);
                let front = st.pending.pop_front();
                st.pending.retain(|p| !matches!(p, Pending::Sync));
                if let Some(f) = front {
                    st.pending.push_front(f);
                }
                st.copy_in = true;
                out.extend_from_slice(&frame.raw);
            }
            b'd' | b'c' if suppressed.is_some() => {}
            _ => out.extend_from_slice(&frame.raw),
        }
        Ok(())
    }

    /// Parses a RowDescription and asks `post_request` for its mask plan.
    async fn plan_shape(
        &self,
        row_description: &[u8],
        facts: &QueryFacts,
    ) -> Result<Arc<Shape>, WireError> {
        let desc = wire::parse_row_description(row_description)?;
        let columns: Vec<ColumnFacts> = desc
            .names
            .into_iter()
            .map(|name| ColumnFacts {
                name,
                table: None,
                type_name: None,
            })
            .collect();
        let (plan, refused) = match self.session.plan_masks(Some(facts), &columns).await {
            Ok(p) => (p, None),
            Err(reason) => (MaskPlan::empty(), Some(reason)),
        };
        Ok(Arc::new(Shape {
            plan,
            type_oids: desc.type_oids,
            formats: desc.formats.into(),
            refused,
        }))
    }

    /// A statement finished (CommandComplete, EmptyQueryResponse, PortalSuspended or an error):
    /// record it and move to the next.
    async fn finish_statement(&self, error: Option<(String, String)>) {
        let done = {
            let mut st = lock(&self.state);
            match st.pending.front_mut() {
                Some(Pending::Simple(q)) => {
                    let i = q.idx.min(q.stmts.len() - 1);
                    let s = &q.stmts[i];
                    let r = (
                        s.facts.clone(),
                        s.decision.clone(),
                        q.rows,
                        q.started.elapsed(),
                    );
                    q.idx += 1;
                    q.rows = 0;
                    q.shape = None;
                    (q.poison.is_none()).then_some(r)
                }
                Some(Pending::Execute(_)) => match st.pending.pop_front() {
                    Some(Pending::Execute(x)) => {
                        Some((x.facts, x.decision, x.rows, x.started.elapsed()))
                    }
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some((facts, decision, rows, duration)) = done {
            self.session
                .record(
                    &facts,
                    &decision,
                    RequestOutcome {
                        rows,
                        duration,
                        error,
                    },
                )
                .await;
        }
    }
}

enum TextOutcome {
    Forward,
    Rewrite,
    Block(String),
}

enum ShapeTarget {
    Simple,
    Slot(ShapeSlot, bool),
}

/// The statement texts with rewrites applied, joined back into one query text.
fn rewritten_text(stmts: &[SimpleStmt]) -> String {
    stmts
        .iter()
        .map(|s| match (&s.decision.action, &s.decision.query) {
            (Action::Rewrite, Some(q)) => q.as_str(),
            _ => &*s.facts.statement,
        })
        .collect::<Vec<_>>()
        .join(";\n")
}

impl Shape {
    fn empty() -> Shape {
        Shape {
            plan: MaskPlan::empty(),
            type_oids: Vec::new(),
            formats: Arc::from([]),
            refused: None,
        }
    }
}
