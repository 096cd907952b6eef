//! `aggd replay --lost`: the loss ledger's unreplayed entries, as windows to replay.

use std::path::Path;

use crate::ledger;
use crate::time::Window;

/// The unreplayed entries of the ledger file `ledger`: windows, ids and reasons.
pub fn lost_windows(ledger: &Path) -> std::io::Result<LostWindows> {
    let (entries, replayed) = ledger::read(ledger)?;
    let mut lost = LostWindows::default();
    for e in entries {
        if replayed.contains(&e.id) || !e.from.is_finite() || !e.to.is_finite() {
            continue;
        }
        lost.windows.push(Window {
            from: e.from,
            to: e.to,
        });
        lost.entries.push((e.id, e.reason));
    }
    Ok(lost)
}

/// The unreplayed entries of a loss ledger ([`lost_windows`]).
#[derive(Clone, Debug, Default)]
pub struct LostWindows {
    /// Their windows.
    pub windows: Vec<Window>,
    /// Their ids (to mark replayed) and reasons' labels.
    pub entries: Vec<(u64, String)>,
}

impl LostWindows {
    /// The reasons' labels.
    pub fn reasons(&self) -> Vec<&str> {
        self.entries.iter().map(|(_, r)| r.as_str()).collect()
    }

    /// The ids to mark replayed after a replay that held back `held`'s refusals.
    pub fn replayed(&self, held: &[crate::reason::DropReason]) -> Vec<u64> {
        let held: Vec<&str> = held.iter().map(|r| r.as_str()).collect();
        self.entries
            .iter()
            .filter(|(_, r)| !held.contains(&r.as_str()))
            .map(|(id, _)| *id)
            .collect()
    }
}
