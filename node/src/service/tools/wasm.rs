//! WebAssembly plugins, run by wasmtime in a sandbox: the plugin ABI is `docs/plugins.md`
//! (its C header `plugins/include/nexus_plugin.h`).
//!
//! What a plugin gets, and nothing else:
//! - its own linear memory, at most its `memory_bytes` (growing past it traps, naming the
//!   limit); no threads, no shared memory;
//! - `fuel` (about one unit per WebAssembly instruction): running out traps, naming it;
//! - a wall-clock deadline, `timeout_ms`, enforced by epoch interruption (a ticker thread
//!   advances the engine's epoch every [`TICK`]) and, around host calls, by the runtime;
//! - the host functions of module `nexus`: `output`, `log`, `take_result` always; `now_ms`
//!   with the `clock` grant; `call` (another tool, as the caller, with every permission
//!   check) with the `tools` grant, or for `http.request` alone with the `http` grant, which
//!   then goes through the tenant's host allow-list like any call of it.
//!
//! There is no filesystem, no socket and no clock otherwise: a plugin may import WASI
//! (`wasi_snapshot_preview1`) so that one built with a libc links, but what it calls there is
//! refused with PERMISSION_DENIED naming what it tried (a file, a socket, the clock without
//! the grant), and the call ends. A grant is asked for in the tool's manifest
//! (`permissions`) and given by a tenant admin (`tools:grant`, `nexusctl tools grant`);
//! registering the module again takes every grant back.
//!
//! Instances are pooled (wasmtime's pooling allocator: memories and tables are reused, not
//! mapped per call) and made from a module compiled once per node and version
//! ([`InstancePre`]); a call runs on a fiber that yields to tokio every [`YIELD_FUEL`] units,
//! so a plugin that computes for long keeps no worker thread from other calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, Val,
};

use crate::config::PluginConfig;
use crate::error::NexusError;

/// How often the engine's epoch advances: the resolution of a plugin's deadline.
pub const TICK: Duration = Duration::from_millis(5);
/// Fuel a plugin burns between yields to the async runtime.
pub const YIELD_FUEL: u64 = 200_000;
/// Most progress messages (`nexus.log`) a call keeps, and the longest.
const MAX_LOGS: usize = 100;
const MAX_LOG_BYTES: usize = 4096;
pub use crate::tools::manifest::{Limits, Manifest, GRANTS};

/// Checks a manifest's asks against `GRANTS` and its limits against the node's maxima.
pub fn validate_manifest(
    field: &str,
    m: &Manifest,
    config: &PluginConfig,
) -> Result<(), NexusError> {
    for p in &m.permissions {
        if !GRANTS.contains(&p.as_str()) {
            return Err(NexusError::invalid(
                format!("{field}.permissions"),
                format!("{p:?} is not a plugin grant; one of {}", GRANTS.join(", ")),
            ));
        }
    }
    for (name, asked, max) in [
        ("fuel", m.limits.fuel, config.max_fuel),
        (
            "memory_bytes",
            m.limits.memory_bytes,
            config.max_memory_bytes,
        ),
        ("timeout_ms", m.limits.timeout_ms, config.max_timeout_ms),
    ] {
        if asked > max {
            return Err(NexusError::invalid(
                format!("{field}.limits.{name}"),
                format!("is {asked}; this node allows at most {max} ([plugins] max_{name})"),
            ));
        }
    }
    Ok(())
}

/// The limits a call runs with: the manifest's, or the node's defaults, within its maxima.
fn effective(m: &Limits, c: &PluginConfig) -> Limits {
    let pick =
        |asked: u64, default: u64, max: u64| if asked == 0 { default } else { asked }.min(max);
    Limits {
        fuel: pick(m.fuel, c.default_fuel, c.max_fuel),
        memory_bytes: pick(m.memory_bytes, c.default_memory_bytes, c.max_memory_bytes),
        timeout_ms: pick(m.timeout_ms, c.default_timeout_ms, c.max_timeout_ms),
    }
}

/// A tool call a plugin made, running.
pub type HostFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, NexusError>> + Send>>;

/// Another tool, called from a plugin as the plugin's caller: `(name, args JSON) -> output`.
pub type HostCall = Arc<dyn Fn(String, String) -> HostFuture + Send + Sync>;

/// What a running plugin's store holds.
struct Host {
    tool: String,
    manifest: Manifest,
    memory_limit: usize,
    /// Why the plugin was stopped, when the host stopped it (a refusal, a limit).
    failure: Option<NexusError>,
    output: Option<Vec<u8>>,
    logs: Vec<String>,
    /// The result (or error message) of the last `nexus.call`, until `take_result`.
    result: Vec<u8>,
    calls: Option<HostCall>,
}

impl Host {
    fn fail(&mut self, e: NexusError) -> wasmtime::Error {
        let text = e.to_string();
        self.failure.get_or_insert(e);
        wasmtime::format_err!("{text}")
    }
}

impl ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            let e = NexusError::ResourceExhausted {
                limit: "memory_bytes".into(),
                message: format!(
                    "plugin {} asked for {desired} bytes of memory; its limit (memory_bytes) is {}",
                    self.tool, self.memory_limit
                ),
            };
            return Err(self.fail(e));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// One call of a plugin: whose, which, with what, and how it calls other tools.
pub struct PluginCall<'a> {
    pub tenant: &'a str,
    pub tool: &'a str,
    pub manifest: &'a Manifest,
    pub args: &'a Value,
    pub calls: Option<HostCall>,
}

/// The engine, its linker of the `nexus` host functions and the epoch ticker: started with
/// the first plugin a node registers or runs, so that a node without plugins reserves no
/// instance pool and runs no ticker.
struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// (tenant, tool, module SHA-256).
type CompiledKey = (String, String, String);

pub struct Plugins {
    config: PluginConfig,
    runtime: OnceLock<Result<Runtime, String>>,
    /// Compiled modules, ready to instantiate.
    compiled: Mutex<HashMap<CompiledKey, Arc<InstancePre<Host>>>>,
    /// Calls running at once (each holds a pooled instance).
    running: Arc<tokio::sync::Semaphore>,
}

fn engine(config: &PluginConfig, pooled: bool) -> wasmtime::Result<Engine> {
    let mut c = Config::new();
    c.consume_fuel(true);
    c.epoch_interruption(true);
    if pooled {
        let mut pool = PoolingAllocationConfig::default();
        let slots = config.max_concurrent as u32 + 1;
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .total_stacks(slots)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(config.max_memory_bytes as usize)
            // A slot's memory is zeroed with memset up to 1 MiB (what a small plugin touches)
            // instead of madvise: no page faults when the slot is used again, and no
            // mmap-lock traffic between the calls of many clients at once. At most
            // (max_concurrent + 1) MiB stay resident. What lies beyond is decommitted in
            // batches.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .decommit_batch_size(32);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&c)
}

/// The host functions of the ABI (module `nexus`).
const NEXUS_IMPORTS: &[&str] = &["output", "log", "take_result", "now_ms", "call"];

impl Runtime {
    fn start(config: &PluginConfig) -> Result<Runtime, String> {
        let engine = match engine(config, true) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "the pooling allocator is not available here; plugins get instances one by one");
                engine(config, false).map_err(|e| format!("{e:#}"))?
            }
        };
        let mut linker = Linker::new(&engine);
        define_host(&mut linker).map_err(|e| format!("{e:#}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("nexus-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("starting the epoch ticker: {e}"))?;
        }
        Ok(Runtime {
            engine,
            linker,
            stop,
        })
    }
}

impl Plugins {
    pub fn new(config: &PluginConfig) -> Plugins {
        Plugins {
            config: config.clone(),
            runtime: OnceLock::new(),
            compiled: Mutex::new(HashMap::new()),
            running: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.max(1))),
        }
    }

    fn runtime(&self) -> Result<&Runtime, NexusError> {
        self.runtime
            .get_or_init(|| Runtime::start(&self.config))
            .as_ref()
            .map_err(|e| NexusError::unavailable(format!("the WebAssembly runtime: {e}")))
    }

    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// Compiles and checks a module being registered as `tool` of `tenant`: its size, its
    /// exports, its imports (only the ABI's and WASI's). Returns its SHA-256 (hex); the
    /// compiled module is kept, so this node's first call does not compile it again.
    pub async fn check_module(
        &self,
        field: &str,
        tenant: &str,
        tool: &str,
        bytes: &[u8],
    ) -> Result<String, NexusError> {
        if bytes.is_empty() {
            return Err(NexusError::invalid(field, "is required for a wasm tool"));
        }
        if bytes.len() as u64 > self.config.max_module_bytes {
            return Err(NexusError::invalid(
                field,
                format!(
                    "is {} bytes; this node takes modules of at most {} ([plugins] max_module_bytes)",
                    bytes.len(),
                    self.config.max_module_bytes
                ),
            ));
        }
        let pre = self
            .prepare(bytes.to_vec())
            .await?
            .map_err(|e| NexusError::invalid(field, e))?;
        let sha = crate::embed::minilm::hex(&Sha256::digest(bytes));
        self.keep((tenant.into(), tool.into(), sha.clone()), Arc::new(pre));
        Ok(sha)
    }

    /// Compiles a module off the async runtime's threads (Cranelift takes milliseconds to
    /// seconds, by the module's size) and links it: what is wrong with it, as text.
    async fn prepare(
        &self,
        bytes: Vec<u8>,
    ) -> Result<Result<InstancePre<Host>, String>, NexusError> {
        let engine = self.runtime()?.engine.clone();
        let module = tokio::task::spawn_blocking(move || Module::new(&engine, &bytes))
            .await
            .map_err(|e| NexusError::internal(format!("compiling a plugin: {e}")))?;
        Ok(module
            .map_err(|e| format!("is not a valid WebAssembly module: {e:#}"))
            .and_then(|m| self.link(&m)))
    }

    fn keep(&self, key: CompiledKey, pre: Arc<InstancePre<Host>>) {
        let mut cache = self.compiled.lock().unwrap();
        if cache.len() >= self.config.max_compiled {
            cache.clear();
        }
        cache.insert(key, pre);
    }

    /// The instance-ready form of `module`: the ABI's exports checked, WASI imports bound to
    /// refusals, anything else refused.
    fn link(&self, module: &Module) -> Result<InstancePre<Host>, String> {
        let mut linker = self.runtime().map_err(|e| e.to_string())?.linker.clone();
        linker.allow_shadowing(true);
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            let ExternType::Func(ty) = import.ty() else {
                return Err(format!(
                    "imports {m}.{name}, which is not a function; plugins import only functions"
                ));
            };
            match m {
                "nexus" if NEXUS_IMPORTS.contains(&name) => {}
                "nexus" => {
                    return Err(format!(
                        "imports nexus.{name}, which the plugin ABI does not have ({})",
                        NEXUS_IMPORTS.join(", ")
                    ))
                }
                "wasi_snapshot_preview1" | "wasi_unstable" => {
                    let call = name.to_string();
                    linker
                        .func_new(m, name, ty.clone(), move |mut caller, params, results| {
                            wasi(&mut caller, &call, params, results)
                        })
                        .map_err(|e| e.to_string())?;
                }
                _ => {
                    return Err(format!(
                        "imports {m}.{name}; plugins import only from nexus (and WASI, which is refused when called)"
                    ))
                }
            }
        }
        for (export, what) in [
            ("memory", "its linear memory"),
            ("nexus_alloc", "(func (param i32) (result i32))"),
            ("nexus_call", "(func (param i32 i32) (result i32))"),
        ] {
            if module.get_export(export).is_none() {
                return Err(format!(
                    "does not export {export}, {what} (the plugin ABI, docs/plugins.md)"
                ));
            }
        }
        linker.instantiate_pre(module).map_err(|e| format!("{e:#}"))
    }

    async fn compiled(
        &self,
        tenant: &str,
        tool: &str,
        manifest: &Manifest,
        bytes: impl FnOnce() -> Result<Vec<u8>, NexusError>,
    ) -> Result<Arc<InstancePre<Host>>, NexusError> {
        let key = (
            tenant.to_string(),
            tool.to_string(),
            manifest.module_sha256.clone(),
        );
        if let Some(c) = self.compiled.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let pre = Arc::new(
            self.prepare(bytes()?)
                .await?
                .map_err(|e| NexusError::internal(format!("plugin {tool}: {e}")))?,
        );
        self.keep(key, pre.clone());
        Ok(pre)
    }

    /// Runs a plugin call within the plugin's limits. `bytes` gives the module when this
    /// node has not compiled it yet; `log` gets what the plugin logged. Returns its output.
    pub async fn run(
        &self,
        call: PluginCall<'_>,
        bytes: impl FnOnce() -> Result<Vec<u8>, NexusError>,
        log: impl Fn(&str),
    ) -> Result<Value, NexusError> {
        let PluginCall {
            tenant,
            tool,
            manifest,
            args,
            calls,
        } = call;
        let limits = effective(&manifest.limits, &self.config);
        let deadline = Duration::from_millis(limits.timeout_ms);
        let started = Instant::now();
        let compiled = self.compiled(tenant, tool, manifest, bytes).await?;
        let _slot = tokio::time::timeout(deadline, self.running.clone().acquire_owned())
            .await
            .map_err(|_| NexusError::ResourceExhausted {
                limit: "plugins.max_concurrent".into(),
                message: format!(
                    "plugin {tool} waited {} ms for one of the node's {} plugin slots",
                    limits.timeout_ms, self.config.max_concurrent
                ),
            })?
            .map_err(|_| NexusError::unavailable("the plugin runtime is shutting down"))?;
        let host = Host {
            tool: tool.to_string(),
            manifest: manifest.clone(),
            memory_limit: limits.memory_bytes as usize,
            failure: None,
            output: None,
            logs: Vec::new(),
            result: Vec::new(),
            calls,
        };
        let mut store = Store::new(&self.runtime()?.engine, host);
        store.limiter(|h| h as &mut dyn ResourceLimiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| NexusError::internal(format!("{e}")))?;
        store
            .fuel_async_yield_interval(Some(YIELD_FUEL))
            .map_err(|e| NexusError::internal(format!("{e}")))?;
        let remaining = deadline.saturating_sub(started.elapsed());
        store.set_epoch_deadline((remaining.as_millis() as u64).div_ceil(TICK.as_millis() as u64));
        store.epoch_deadline_trap();
        let input = serde_json::to_vec(args).expect("JSON serializes");
        let run = async {
            let instance = compiled.instantiate_async(&mut store).await?;
            let alloc = instance.get_typed_func::<i32, i32>(&mut store, "nexus_alloc")?;
            let entry = instance.get_typed_func::<(i32, i32), i32>(&mut store, "nexus_call")?;
            let memory = instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| wasmtime::format_err!("the plugin exports no memory"))?;
            let len = input.len() as i32;
            let ptr = alloc.call_async(&mut store, len).await?;
            memory
                .write(&mut store, ptr as u32 as usize, &input)
                .map_err(|_| {
                    wasmtime::format_err!(
                        "nexus_alloc({len}) returned {ptr}, outside the plugin's memory"
                    )
                })?;
            entry.call_async(&mut store, (ptr, len)).await
        };
        let outcome = tokio::time::timeout(remaining, run).await;
        let fuel_left = store.get_fuel().unwrap_or(0);
        let host = store.into_data();
        for line in host.logs.iter() {
            log(line);
        }
        let limit_error = |what: &str, message: String| NexusError::ResourceExhausted {
            limit: what.into(),
            message,
        };
        let status = match outcome {
            Err(_) => {
                return Err(limit_error(
                    "timeout_ms",
                    format!(
                        "plugin {tool} did not finish within its deadline of {} ms (timeout_ms)",
                        limits.timeout_ms
                    ),
                ))
            }
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                if let Some(f) = host.failure {
                    return Err(f);
                }
                return Err(match e.downcast_ref::<Trap>() {
                    Some(Trap::OutOfFuel) => limit_error(
                        "fuel",
                        format!(
                            "plugin {tool} used all its fuel ({} units, fuel) and was stopped",
                            limits.fuel
                        ),
                    ),
                    Some(Trap::Interrupt) => limit_error(
                        "timeout_ms",
                        format!(
                            "plugin {tool} ran past its deadline of {} ms (timeout_ms) and was stopped",
                            limits.timeout_ms
                        ),
                    ),
                    _ => NexusError::precondition(
                        "tool",
                        format!("plugin {tool} trapped: {}", trap_text(&e)),
                    ),
                });
            }
        };
        tracing::trace!(tool, fuel_used = limits.fuel - fuel_left, "plugin call");
        let out = host.output.unwrap_or_default();
        if status != 0 {
            let message = String::from_utf8_lossy(&out);
            return Err(NexusError::precondition(
                "tool",
                format!(
                    "plugin {tool} failed (status {status}): {}",
                    if message.is_empty() {
                        "no message"
                    } else {
                        &message
                    }
                ),
            ));
        }
        if out.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out).map_err(|e| {
            NexusError::precondition(
                "tool",
                format!("plugin {tool} returned output that is not JSON: {e}"),
            )
        })
    }
}

/// A trap's message with its WebAssembly backtrace, on one line each.
fn trap_text(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    crate::error::excerpt(&text, 2000).to_string()
}

fn memory(caller: &mut wasmtime::Caller<'_, Host>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::format_err!("the plugin exports no memory"))
}

/// `len` bytes of the plugin's memory at `ptr`, at most `max`.
fn read_guest(
    caller: &mut wasmtime::Caller<'_, Host>,
    ptr: i32,
    len: i32,
    max: usize,
    what: &str,
) -> wasmtime::Result<Vec<u8>> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > max {
        let tool = caller.data().tool.clone();
        let e = NexusError::ResourceExhausted {
            limit: what.into(),
            message: format!("plugin {tool} passed {len} bytes of {what}; at most {max}"),
        };
        return Err(caller.data_mut().fail(e));
    }
    let mem = memory(caller)?;
    mem.data(&*caller)
        .get(ptr..ptr.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            wasmtime::format_err!("{what} at {ptr}+{len} is outside the plugin's memory")
        })
}

fn denied(caller: &mut wasmtime::Caller<'_, Host>, what: String) -> wasmtime::Error {
    let tool = caller.data().tool.clone();
    caller.data_mut().fail(NexusError::PermissionDenied(format!(
        "plugin {tool} {what}"
    )))
}

fn now_ms() -> i64 {
    crate::memory::now_ms()
}

/// The `nexus` host functions (docs/plugins.md).
fn define_host(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "nexus",
        "output",
        |mut caller: wasmtime::Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read_guest(&mut caller, ptr, len, super::MAX_ARGS_BYTES, "output")?;
            caller.data_mut().output = Some(bytes);
            Ok(())
        },
    )?;
    linker.func_wrap(
        "nexus",
        "log",
        |mut caller: wasmtime::Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let len = len.min(MAX_LOG_BYTES as i32);
            let bytes = read_guest(&mut caller, ptr, len, MAX_LOG_BYTES, "log")?;
            let logs = &mut caller.data_mut().logs;
            if logs.len() < MAX_LOGS {
                logs.push(String::from_utf8_lossy(&bytes).into_owned());
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        "nexus",
        "now_ms",
        |mut caller: wasmtime::Caller<'_, Host>| -> wasmtime::Result<i64> {
            if !caller.data().manifest.granted("clock") {
                return Err(denied(
                    &mut caller,
                    "read the clock (nexus.now_ms) without the clock grant; a tenant admin grants it: nexusctl tools grant TOOL clock".into(),
                ));
            }
            Ok(now_ms())
        },
    )?;
    linker.func_wrap(
        "nexus",
        "take_result",
        |mut caller: wasmtime::Caller<'_, Host>, ptr: i32| -> wasmtime::Result<()> {
            let result = std::mem::take(&mut caller.data_mut().result);
            let mem = memory(&mut caller)?;
            mem.write(&mut caller, ptr as u32 as usize, &result)
                .map_err(|_| {
                    wasmtime::format_err!("take_result at {ptr}: outside the plugin's memory")
                })
        },
    )?;
    linker.func_wrap_async(
        "nexus",
        "call",
        |mut caller: wasmtime::Caller<'_, Host>,
         (name_ptr, name_len, args_ptr, args_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let name = read_guest(&mut caller, name_ptr, name_len, 256, "tool name")?;
                let name = String::from_utf8_lossy(&name).into_owned();
                let args = read_guest(
                    &mut caller,
                    args_ptr,
                    args_len,
                    super::MAX_ARGS_BYTES,
                    "arguments",
                )?;
                let manifest = &caller.data().manifest;
                let allowed = manifest.granted("tools")
                    || (name == "http.request" && manifest.granted("http"));
                if !allowed {
                    let grant = if name == "http.request" { "http (or tools)" } else { "tools" };
                    return Err(denied(
                        &mut caller,
                        format!("called {name} without the {grant} grant; a tenant admin grants it: nexusctl tools grant TOOL {}", grant.split(' ').next().unwrap_or(grant)),
                    ));
                }
                let Some(calls) = caller.data().calls.clone() else {
                    return Err(denied(&mut caller, format!("called {name}: no tool calls here")));
                };
                let args = String::from_utf8_lossy(&args).into_owned();
                let (code, bytes) = match calls(name, args).await {
                    Ok(v) => {
                        let text = v.to_string().into_bytes();
                        (text.len() as i32, text)
                    }
                    Err(e) => {
                        let text = e.to_string().into_bytes();
                        (-(text.len() as i32) - 1, text)
                    }
                };
                caller.data_mut().result = bytes;
                Ok(code)
            })
        },
    )?;
    Ok(())
}

/// A WASI function a plugin called: refused, naming what it tried, but for the clock when
/// granted.
fn wasi(
    caller: &mut wasmtime::Caller<'_, Host>,
    name: &str,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    if name == "clock_time_get" && caller.data().manifest.granted("clock") {
        let ptr = params.get(2).and_then(Val::i32).unwrap_or(0) as u32 as usize;
        let nanos = (now_ms() as u64).saturating_mul(1_000_000);
        let mem = memory(caller)?;
        mem.write(&mut *caller, ptr, &nanos.to_le_bytes())
            .map_err(|_| {
                wasmtime::format_err!("clock_time_get at {ptr}: outside the plugin's memory")
            })?;
        if let Some(r) = results.first_mut() {
            *r = Val::I32(0);
        }
        return Ok(());
    }
    let what = if name.starts_with("path_") || name.starts_with("fd_") {
        format!("tried to use a file (WASI {name}): plugins have no filesystem and no standard streams; log with nexus.log, keep data with the memory tools")
    } else if name.starts_with("sock_") {
        format!("tried to use a socket (WASI {name}): plugins have no network; call http.request through nexus.call with the http grant")
    } else if name.starts_with("clock_") || name == "poll_oneoff" {
        format!("tried to read the clock or sleep (WASI {name}) without the clock grant; a tenant admin grants it: nexusctl tools grant TOOL clock")
    } else if name == "proc_exit" {
        let code = params.first().and_then(Val::i32).unwrap_or(0);
        let tool = caller.data().tool.clone();
        return Err(caller.data_mut().fail(NexusError::precondition(
            "tool",
            format!(
                "plugin {tool} exited (proc_exit({code})) instead of returning from nexus_call"
            ),
        )));
    } else {
        format!("called WASI {name}, which plugins are not given")
    };
    Err(denied(caller, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_checked() {
        let c = PluginConfig::default();
        let m = Manifest::parse(
            "tool.config",
            r#"{"permissions": ["clock"], "limits": {"fuel": 5}}"#,
        )
        .unwrap();
        validate_manifest("tool.config", &m, &c).unwrap();
        let bad = Manifest::parse("tool.config", r#"{"permissions": ["fs"]}"#).unwrap();
        let e = validate_manifest("tool.config", &bad, &c).unwrap_err();
        assert!(e.to_string().contains("not a plugin grant"), "{e}");
        let big = Manifest {
            limits: Limits {
                memory_bytes: c.max_memory_bytes + 1,
                ..Limits::default()
            },
            ..Manifest::default()
        };
        assert!(validate_manifest("tool.config", &big, &c).is_err());
        assert!(Manifest::parse("tool.config", r#"{"perms": []}"#).is_err());
        let e = effective(&Limits::default(), &c);
        assert_eq!(e.fuel, c.default_fuel);
    }
}
