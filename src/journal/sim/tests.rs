use super::*;

fn read(fs: &SimFs, p: &str) -> Option<Vec<u8>> {
    fs.read(Path::new(p)).ok()
}

#[test]
fn synced_data_and_names_survive_and_unsynced_ones_may_not() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let fs2 = SimFs::new();
        // Rebuild the same history on a fresh filesystem for each seed.
        let mut f = fs2.create_new(Path::new("/d/a")).unwrap();
        f.write_all(b"durable").unwrap();
        f.sync_data().unwrap();
        fs2.sync_dir(Path::new("/d")).unwrap();
        f.write_all(b" pending").unwrap();
        fs2.write_file(Path::new("/d/b"), b"unnamed").unwrap();
        fs2.crash(seed);
        let a = read(&fs2, "/d/a").unwrap();
        assert!(a.starts_with(b"durable"), "{a:?}");
        assert!(a.len() <= b"durable pending".len());
        let b = read(&fs2, "/d/b");
        outcomes.insert((a.len(), b.is_some()));
        // The stale handle is dead after the crash.
        assert!(f.write_all(b"x").is_err());
    }
    // Both extremes happen: nothing pending kept, everything kept.
    assert!(outcomes.contains(&(7, false)), "{outcomes:?}");
    assert!(outcomes.contains(&(15, true)), "{outcomes:?}");
}

#[test]
fn a_file_replaced_durably_holds_the_new_content_after_any_power_loss() {
    for seed in 0..200 {
        let fs = SimFs::new();
        let path = Path::new("/d/cluster.state");
        crate::journal::io::write_durably(&fs, path, b"old").unwrap();
        crate::journal::io::write_durably(&fs, path, b"new").unwrap();
        fs.crash(seed);
        assert_eq!(
            read(&fs, "/d/cluster.state").unwrap(),
            b"new",
            "seed {seed}"
        );
        assert!(read(&fs, "/d/cluster.state.tmp").is_none(), "seed {seed}");
    }
}

#[test]
fn a_rename_whose_directory_was_synced_is_durable() {
    let mut back = 0;
    for seed in 0..64 {
        // Crashing consumes the pending state: build the history again per seed.
        let copy = SimFs::new();
        copy.write_file(Path::new("/d/t.tmp"), b"new").unwrap();
        copy.rename(Path::new("/d/t.tmp"), Path::new("/d/t"))
            .unwrap();
        copy.sync_dir(Path::new("/d")).unwrap();
        copy.remove_file(Path::new("/d/t")).unwrap();
        copy.crash(seed);
        assert!(read(&copy, "/d/t.tmp").is_none());
        if read(&copy, "/d/t").is_some() {
            back += 1;
        }
    }
    assert!(
        back > 0 && back < 64,
        "the unsynced removal is sometimes lost: {back}"
    );
}
