//! Uploaded files' bytes, through one seam: a directory on disk (standalone) or
//! the chat's PostgreSQL database (a cluster, so logic hosts need no shared
//! disk). Which conversation a file belongs to is kept by the store
//! ([`crate::ChatStore::add_upload`]); a blob is only its bytes under an id.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::StoreError;

/// Where uploaded bytes are kept.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Keeps `data` under `id` (a fresh random id: never overwritten).
    async fn put(&self, id: &str, data: &[u8]) -> Result<(), StoreError>;
    /// The bytes under `id`.
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Forgets `id` (nothing when absent).
    async fn remove(&self, id: &str) -> Result<(), StoreError>;
}

/// Blobs as files in one directory, named by their ids.
pub struct DirBlobs {
    dir: PathBuf,
}

impl DirBlobs {
    /// Blobs in `dir` (made when missing).
    pub fn new(dir: PathBuf) -> std::io::Result<DirBlobs> {
        std::fs::create_dir_all(&dir)?;
        Ok(DirBlobs { dir })
    }

    /// The file of `id`; ids are the chat's own (letters, digits, `-`, `_`), so
    /// no id leaves the directory.
    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(StoreError::Invalid("not an upload id"));
        }
        Ok(self.dir.join(id))
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Corrupt(format!("upload directory: {e}"))
}

#[async_trait]
impl BlobStore for DirBlobs {
    async fn put(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path(id)?;
        // Written aside and renamed, so a reader never sees half a file.
        let tmp = self.dir.join(format!(".{id}.part"));
        tokio::fs::write(&tmp, data).await.map_err(io_error)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io_error)
    }

    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path(id)?).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(id)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        }
    }
}

/// What an upload's first bytes say it is: the image types the chat accepts.
/// The name and the declared type are not trusted.
pub fn sniff_image(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_recognised_by_their_bytes_only() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_image(b"\xff\xd8\xff\xe0...."), Some("image/jpeg"));
        assert_eq!(sniff_image(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        for not in [
            &b"<svg xmlns='http://www.w3.org/2000/svg'>"[..],
            b"<html>",
            b"",
            b"RIFF",
        ] {
            assert_eq!(sniff_image(not), None);
        }
    }

    #[tokio::test]
    async fn a_directory_keeps_blobs_and_refuses_paths() {
        let dir = std::env::temp_dir().join(format!("herald-blobs-{}", std::process::id()));
        let blobs = DirBlobs::new(dir.clone()).unwrap();
        blobs.put("abc_1-2", b"bytes").await.unwrap();
        assert_eq!(blobs.get("abc_1-2").await.unwrap().unwrap(), b"bytes");
        assert_eq!(blobs.get("missing").await.unwrap(), None);
        for bad in ["../etc/passwd", "a/b", "", ".hidden"] {
            assert!(blobs.get(bad).await.is_err(), "{bad}");
        }
        blobs.remove("abc_1-2").await.unwrap();
        blobs.remove("abc_1-2").await.unwrap();
        assert_eq!(blobs.get("abc_1-2").await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
