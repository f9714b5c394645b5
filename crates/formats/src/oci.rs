//! Container images as the OCI image specification (v1.1) lays them out:
//! an image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`)
//! holding one image, either a single-platform image manifest or an image
//! index of them, each with its config and layers.
//!
//! [`check_layout`] reads a layout a build produced and checks every blob
//! it reaches against its descriptor's digest and size, and each manifest,
//! index and config against the spec, before anything of it is stored: a
//! registry serves what it was given, so nothing malformed may get in.
//! Only sha256 digests are accepted: the artifact repository is addressed
//! by sha256.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The media types custody serves.
pub mod media {
    /// An image index: manifests for several platforms.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An image manifest: one platform's config and layers.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An image's config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// The layers an image may have: tar, gzip- or zstd-compressed.
    pub const LAYERS: [&str; 3] = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ];
    /// The empty descriptor's media type (an artifact manifest's config).
    pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// An in-toto DSSE envelope, as a referrer's artifact type.
    pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
}

/// The largest manifest, index or config read: 4 MiB, as registries
/// commonly allow.
pub const MAX_DOCUMENT: u64 = 4 * 1024 * 1024;

/// The most manifests an index may list, and layers a manifest may have.
pub const MAX_ENTRIES: usize = 1024;

/// What is wrong with an image layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    /// The layout itself (its marker, its index) is wrong.
    #[error("the image layout {0}")]
    Layout(String),
    /// A blob is missing, too big, or not what its descriptor says.
    #[error("blob {digest}: {why}")]
    Blob {
        /// The blob's digest, as the descriptor gives it.
        digest: String,
        /// What is wrong.
        why: String,
    },
    /// A manifest, index or config breaks the image specification.
    #[error("{what} {digest}: {why}")]
    Document {
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// What is wrong.
        why: String,
    },
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of what it points at.
    pub media_type: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: String,
    /// The size in bytes.
    pub size: u64,
    /// The platform, for an index's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// An artifact's type, where it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform an image runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// The CPU architecture (`amd64`, `arm64`, …).
    pub architecture: String,
    /// The operating system (`linux`, …).
    pub os: String,
    /// The CPU variant, where it matters (`v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Config {
    architecture: String,
    os: String,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

/// An image checked whole: its top descriptor (a manifest or an index),
/// and every blob it reaches, each once, with its size and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedImage {
    /// The image's manifest or index.
    pub top: Descriptor,
    /// The platforms it runs on, one per manifest.
    pub platforms: Vec<Platform>,
    /// Every blob, the top one included: digest, size, media type, and
    /// where it lies in the layout.
    pub blobs: Vec<LayoutBlob>,
}

/// One blob of a checked layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutBlob {
    /// `sha256:…`.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Its file.
    pub path: PathBuf,
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits: the hex part.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// Checks the image layout in `dir` and the one image its index names.
/// Nothing of the layout may be a symbolic link (its directories, its
/// index or its blobs): a layout is read where it lies, never elsewhere.
/// The caller checks that no directory above `dir` is one.
pub fn check_layout(dir: &Path) -> Result<CheckedImage, OciError> {
    for inner in [dir.to_path_buf(), dir.join("blobs"), dir.join("blobs/sha256")] {
        let real = std::fs::symlink_metadata(&inner).map(|m| m.file_type().is_dir()).unwrap_or(false);
        if !real {
            return Err(OciError::Layout(format!(
                "has no directory {} (a symbolic link is not one)",
                inner.strip_prefix(dir).ok().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).display()
            )));
        }
    }
    let marker = read_small(&dir.join("oci-layout"))
        .map_err(|why| OciError::Layout(format!("has no readable oci-layout file: {why}")))?;
    let marker: LayoutMarker = serde_json::from_slice(&marker)
        .map_err(|e| OciError::Layout(format!("marker oci-layout is not the spec's JSON: {e}")))?;
    if marker.image_layout_version != "1.0.0" {
        return Err(OciError::Layout(format!(
            "is version {:?}; custody reads version 1.0.0",
            marker.image_layout_version
        )));
    }
    let index = read_small(&dir.join("index.json"))
        .map_err(|why| OciError::Layout(format!("has no readable index.json: {why}")))?;
    let index: Index = serde_json::from_slice(&index)
        .map_err(|e| OciError::Layout(format!("index.json is not an image index: {e}")))?;
    if index.schema_version != 2 || index.media_type.as_deref().is_some_and(|m| m != media::INDEX) {
        return Err(OciError::Layout("index.json is not an image index of schema version 2".into()));
    }
    let [top] = index.manifests.as_slice() else {
        return Err(OciError::Layout(format!(
            "index.json names {} images; a pipeline's image layout holds exactly one",
            index.manifests.len()
        )));
    };
    let mut checker = Checker { dir, blobs: Vec::new() };
    let platforms = match top.media_type.as_str() {
        media::MANIFEST => vec![checker.manifest(top)?],
        media::INDEX => checker.index(top)?,
        other => {
            return Err(OciError::Layout(format!("names a {other:?}; an image is an image manifest or an image index")))
        }
    };
    Ok(CheckedImage { top: top.clone(), platforms, blobs: checker.blobs })
}

struct Checker<'a> {
    dir: &'a Path,
    blobs: Vec<LayoutBlob>,
}

impl Checker<'_> {
    /// The blob a descriptor names, checked against its digest and size.
    /// Documents are returned whole; other blobs are hashed as they stream.
    fn blob(&mut self, d: &Descriptor, document: bool) -> Result<Vec<u8>, OciError> {
        let bad = |why: String| OciError::Blob { digest: d.digest.clone(), why };
        let hex =
            sha256_hex(&d.digest).ok_or_else(|| bad("is not a sha256 digest of 64 lowercase hex digits".into()))?;
        if document && d.size > MAX_DOCUMENT {
            return Err(bad(format!("is {} bytes; a manifest, index or config is at most {MAX_DOCUMENT}", d.size)));
        }
        let path = self.dir.join("blobs/sha256").join(hex);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| bad(format!("is not in the layout: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(bad("is not a regular file in the layout".into()));
        }
        if meta.len() != d.size {
            return Err(bad(format!("is {} bytes, not the {} its descriptor says", meta.len(), d.size)));
        }
        let mut file = std::fs::File::open(&path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buffer).map_err(|e| bad(format!("cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            if document {
                kept.extend_from_slice(&buffer[..n]);
            }
        }
        let got = hex::encode(hasher.finalize());
        if got != hex {
            return Err(bad(format!("holds bytes whose sha256 is {got}")));
        }
        if !self.blobs.iter().any(|b| b.digest == d.digest) {
            self.blobs.push(LayoutBlob {
                digest: d.digest.clone(),
                size: d.size,
                media_type: d.media_type.clone(),
                path,
            });
        }
        Ok(kept)
    }

    fn index(&mut self, d: &Descriptor) -> Result<Vec<Platform>, OciError> {
        let bytes = self.blob(d, true)?;
        let bad = |why: String| OciError::Document { what: "index", digest: d.digest.clone(), why };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| bad(format!("is not an image index: {e}")))?;
        if index.schema_version != 2 {
            return Err(bad(format!("has schema version {}, not 2", index.schema_version)));
        }
        if index.media_type.as_deref() != Some(media::INDEX) {
            return Err(bad(format!("must say its media type is {}", media::INDEX)));
        }
        if index.manifests.is_empty() || index.manifests.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "lists {} manifests; an image index lists 1 to {MAX_ENTRIES}",
                index.manifests.len()
            )));
        }
        let mut platforms = Vec::new();
        for m in &index.manifests {
            if m.media_type != media::MANIFEST {
                return Err(bad(format!("lists a {:?}; each entry is an image manifest", m.media_type)));
            }
            let platform = m.platform.clone().ok_or_else(|| bad(format!("lists {} without its platform", m.digest)))?;
            let built = self.manifest(m)?;
            if (built.architecture.as_str(), built.os.as_str())
                != (platform.architecture.as_str(), platform.os.as_str())
            {
                return Err(bad(format!(
                    "says {} is for {}/{}, but its config says {}/{}",
                    m.digest, platform.os, platform.architecture, built.os, built.architecture
                )));
            }
            platforms.push(platform);
        }
        Ok(platforms)
    }

    /// An image manifest and its config and layers: the platform its
    /// config names.
    fn manifest(&mut self, d: &Descriptor) -> Result<Platform, OciError> {
        let bytes = self.blob(d, true)?;
        let bad = |why: String| OciError::Document { what: "manifest", digest: d.digest.clone(), why };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("is not an image manifest: {e}")))?;
        if manifest.schema_version != 2 {
            return Err(bad(format!("has schema version {}, not 2", manifest.schema_version)));
        }
        if manifest.media_type.as_deref() != Some(media::MANIFEST) {
            return Err(bad(format!("must say its media type is {}", media::MANIFEST)));
        }
        if manifest.config.media_type != media::CONFIG {
            return Err(bad(format!("has a config of type {:?}, not {}", manifest.config.media_type, media::CONFIG)));
        }
        if manifest.layers.len() > MAX_ENTRIES {
            return Err(bad(format!("has {} layers; at most {MAX_ENTRIES}", manifest.layers.len())));
        }
        for layer in &manifest.layers {
            if !media::LAYERS.contains(&layer.media_type.as_str()) {
                return Err(bad(format!(
                    "has a layer of type {:?}; layers are {}",
                    layer.media_type,
                    media::LAYERS.join(", ")
                )));
            }
        }
        let config_bytes = self.blob(&manifest.config, true)?;
        let bad_config =
            |why: String| OciError::Document { what: "config", digest: manifest.config.digest.clone(), why };
        let config: Config =
            serde_json::from_slice(&config_bytes).map_err(|e| bad_config(format!("is not an image config: {e}")))?;
        if config.rootfs.kind != "layers" {
            return Err(bad_config(format!("has a rootfs of type {:?}, not \"layers\"", config.rootfs.kind)));
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad_config(format!(
                "names {} layers (diff_ids), but its manifest has {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        if let Some(bad_id) = config.rootfs.diff_ids.iter().find(|id| sha256_hex(id).is_none()) {
            return Err(bad_config(format!("has a diff_id {bad_id:?} that is not a sha256 digest")));
        }
        for layer in &manifest.layers {
            self.blob(layer, false)?;
        }
        Ok(Platform { architecture: config.architecture, os: config.os, variant: None })
    }
}

/// A small file read whole, refused past [`MAX_DOCUMENT`].
fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_DOCUMENT {
        return Err(format!("it is {} bytes, more than {MAX_DOCUMENT}", meta.len()));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes a blob into the layout: its descriptor.
    fn put(dir: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    /// A single-platform image of one layer for `arch`: its manifest's descriptor.
    fn image(dir: &Path, arch: &str) -> Descriptor {
        let layer = put(dir, media::LAYERS[1], format!("layer for {arch}").as_bytes());
        let config = put(
            dir,
            media::CONFIG,
            &json_bytes(&json!({
                "architecture": arch, "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", "a".repeat(64))] }
            })),
        );
        put(
            dir,
            media::MANIFEST,
            &json_bytes(
                &json!({ "schemaVersion": 2, "mediaType": media::MANIFEST, "config": config, "layers": [layer] }),
            ),
        )
    }

    fn layout(dir: &Path, top: &Descriptor) {
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": [top] });
        std::fs::write(dir.join("index.json"), json_bytes(&index)).unwrap();
    }

    #[test]
    fn a_single_platform_image_is_checked_blob_by_blob() {
        let dir = tempfile::tempdir().unwrap();
        let top = image(dir.path(), "amd64");
        layout(dir.path(), &top);
        let checked = check_layout(dir.path()).unwrap();
        assert_eq!(checked.top.digest, top.digest);
        assert_eq!(checked.blobs.len(), 3, "manifest, config, layer: {checked:?}");
        assert_eq!(checked.platforms[0].architecture, "amd64");
    }

    #[test]
    fn an_image_index_of_two_platforms_is_checked_through_each_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let mut amd = image(dir.path(), "amd64");
        amd.platform = Some(Platform { architecture: "amd64".into(), os: "linux".into(), variant: None });
        let mut arm = image(dir.path(), "arm64");
        arm.platform = Some(Platform { architecture: "arm64".into(), os: "linux".into(), variant: None });
        let index = put(
            dir.path(),
            media::INDEX,
            &json_bytes(&json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": [amd, arm] })),
        );
        layout(dir.path(), &index);
        let checked = check_layout(dir.path()).unwrap();
        assert_eq!(checked.platforms.len(), 2);
        assert_eq!(checked.blobs.len(), 7, "the index and two images of three blobs");
    }

    #[test]
    fn a_layer_changed_after_its_manifest_was_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let top = image(dir.path(), "amd64");
        layout(dir.path(), &top);
        let layer = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).unwrap() == b"layer for amd64")
            .unwrap();
        std::fs::write(&layer, b"layer for AMD64").unwrap();
        let refused = check_layout(dir.path()).unwrap_err();
        assert!(matches!(&refused, OciError::Blob { why, .. } if why.contains("sha256 is")), "{refused}");
    }

    #[test]
    fn an_index_whose_platform_lies_about_its_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut amd = image(dir.path(), "amd64");
        amd.platform = Some(Platform { architecture: "arm64".into(), os: "linux".into(), variant: None });
        let index = put(
            dir.path(),
            media::INDEX,
            &json_bytes(&json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": [amd] })),
        );
        layout(dir.path(), &index);
        let refused = check_layout(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("its config says linux/amd64"), "{refused}");
    }

    #[test]
    fn malformed_layouts_are_refused_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(check_layout(d).unwrap_err().to_string().contains("no directory blobs"));
        std::fs::create_dir_all(d.join("blobs/sha256")).unwrap();
        assert!(check_layout(d).unwrap_err().to_string().contains("oci-layout"));
        let top = image(d, "amd64");
        layout(d, &top);
        // Two images in one layout.
        let index = json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": [top, top] });
        std::fs::write(d.join("index.json"), json_bytes(&index)).unwrap();
        assert!(check_layout(d).unwrap_err().to_string().contains("exactly one"));
        // A digest that is not sha256, and a size that lies.
        for (digest, size, why) in [
            (format!("sha512:{}", "a".repeat(128)), top.size, "not a sha256 digest"),
            (top.digest.clone(), top.size + 1, "not the"),
            (format!("sha256:{}", "A".repeat(64)), top.size, "not a sha256 digest"),
        ] {
            let wrong = Descriptor { digest, size, ..top.clone() };
            layout(d, &wrong);
            let refused = check_layout(d).unwrap_err().to_string();
            assert!(refused.contains(why), "{refused}");
        }
        // A blob that is a symbolic link out of the layout.
        let outside = tempfile::tempdir().unwrap();
        let target = put(outside.path(), media::MANIFEST, b"{}");
        let hex = sha256_hex(&target.digest).unwrap();
        std::os::unix::fs::symlink(outside.path().join("blobs/sha256").join(hex), d.join("blobs/sha256").join(hex))
            .unwrap();
        layout(d, &target);
        assert!(check_layout(d).unwrap_err().to_string().contains("not a regular file"));
        // A blobs directory that is a symbolic link to elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        let top = image(elsewhere.path(), "amd64");
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("blobs"), linked.path().join("blobs")).unwrap();
        layout(linked.path(), &top);
        assert!(check_layout(linked.path()).unwrap_err().to_string().contains("no directory blobs"));
    }

    #[test]
    fn a_manifest_with_a_foreign_layer_type_or_a_wrong_layer_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let layer = put(d, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"foreign");
        let config = put(
            d,
            media::CONFIG,
            &json_bytes(
                &json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [] } }),
            ),
        );
        let top = put(
            d,
            media::MANIFEST,
            &json_bytes(
                &json!({ "schemaVersion": 2, "mediaType": media::MANIFEST, "config": config, "layers": [layer] }),
            ),
        );
        layout(d, &top);
        assert!(check_layout(d).unwrap_err().to_string().contains("has a layer of type"));
        let layer = put(d, media::LAYERS[0], b"plain tar");
        let top = put(
            d,
            media::MANIFEST,
            &json_bytes(
                &json!({ "schemaVersion": 2, "mediaType": media::MANIFEST, "config": config, "layers": [layer] }),
            ),
        );
        layout(d, &top);
        assert!(check_layout(d).unwrap_err().to_string().contains("names 0 layers"));
    }
}
