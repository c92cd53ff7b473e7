//! Knowing when a file holds given bytes: inotify on its directory (the agent renames a temp
//! file over the destination, so each install is one IN_MOVED_TO naming it), then a read of
//! the file to compare its bytes. The time taken is the time the comparison succeeded.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};

use crate::Res;

pub struct DirWatch {
    dir: PathBuf,
    stream: EventStream<Vec<u8>>,
    /// IN_MOVED_TO / IN_CLOSE_WRITE events seen per destination name (installs).
    pub installs: HashMap<String, u64>,
}

impl DirWatch {
    /// Creates `dir` if needed and watches it. Must exist before the agent writes.
    pub fn new(dir: &Path) -> Res<DirWatch> {
        std::fs::create_dir_all(dir)?;
        let ino = Inotify::init()?;
        ino.watches().add(dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)?;
        let stream = ino.into_event_stream(vec![0u8; 1 << 16])?;
        Ok(DirWatch { dir: dir.to_owned(), stream, installs: HashMap::new() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Waits until each of `want` (name -> expected bytes) holds its bytes; returns when each
    /// was seen to. `check_first`: look at the files before waiting for events (they may
    /// already hold them). Names not done by `deadline` are left out of the result.
    pub async fn wait_all(
        &mut self,
        want: &HashMap<String, Vec<u8>>,
        check_first: bool,
        timeout: Duration,
    ) -> HashMap<String, Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = HashMap::new();
        let mut pending: HashSet<&String> = want.keys().collect();
        if check_first {
            self.recheck(want, &mut pending, &mut done);
        }
        while !pending.is_empty() {
            let ev = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Err(_))) => continue,
                Ok(Some(Ok(ev))) => ev,
            };
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                self.recheck(want, &mut pending, &mut done);
                continue;
            }
            let Some(name) = ev.name.as_ref().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') {
                continue; // the agent's temp files
            }
            *self.installs.entry(name.to_owned()).or_default() += 1;
            if let Some(&key) = pending.get(&name.to_owned())
                && std::fs::read(self.dir.join(name)).ok().as_deref() == Some(want[key].as_slice())
            {
                done.insert(key.clone(), Instant::now());
                pending.remove(key);
            }
        }
        done
    }

    fn recheck<'a>(
        &self,
        want: &'a HashMap<String, Vec<u8>>,
        pending: &mut HashSet<&'a String>,
        done: &mut HashMap<String, Instant>,
    ) {
        let now = Instant::now();
        pending.retain(|name| {
            let ok =
                std::fs::read(self.dir.join(name.as_str())).ok().as_deref() == Some(want[*name].as_slice());
            if ok {
                done.insert((*name).clone(), now);
            }
            !ok
        });
    }

    /// One file: the time it was seen to hold `bytes`, or None after `timeout`.
    pub async fn wait_one(&mut self, name: &str, bytes: &[u8], timeout: Duration) -> Option<Instant> {
        let want = HashMap::from([(name.to_owned(), bytes.to_vec())]);
        self.wait_all(&want, false, timeout).await.remove(name)
    }

    /// Consumes the queued events, counting installs.
    pub async fn drain(&mut self) {
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(1), self.stream.next()).await {
            if let Ok(ev) = ev
                && let Some(name) = ev.name.as_ref().and_then(|n| n.to_str())
                && !name.starts_with('.')
            {
                *self.installs.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
}
