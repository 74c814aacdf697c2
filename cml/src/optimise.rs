//! Log optimisation at append time (Coda style), within one volume of one cell.
//!
//! Each rule finds the records related to the incoming one through the `touches` index and
//! writes what it would change into a [`Plan`]; [`crate::rebase`] then re-derives the bases the
//! change affects, and rejects the plan if it cannot, in which case the record is just appended.
//! Records that were handed out for reintegration (`frozen`) may already be on the server, so no
//! rule ever deletes or rewrites one.
//!
//! "Offline-created" below means the log still holds (unfrozen) the record that created the
//! object.
//!
//! 1. **A Store replaces earlier Stores** of the same file: their contents are overwritten.
//! 2. **Create … Remove cancels.** Removing an offline-created object deletes every record of it
//!    (its creation, Stores, SetAttrs and Renames), and the removal is not stored. A Rename of it
//!    that replaced another object becomes the removal of that object, which is all that is left
//!    of it. Not done when the object has Link records (another name may survive; the simplest
//!    correct choice), or when other records use it (as a directory, or as a rename's victim).
//! 3. **Removing any other object for good** deletes its earlier Stores and SetAttrs, whose
//!    effect is moot. "For good" is what the log cannot always tell: a file may have names it
//!    never saw (made before the log began, or by records already reintegrated), and dropping a
//!    Store then loses data under the surviving name. So this is done for a RemoveDir (a
//!    directory has one name), for a Remove of a file the log created with no Link records, and
//!    for a Remove the caller vouches removes the last name
//!    ([`crate::Cml::append_removing_last_name`]).
//! 4. **SetAttrs merge**: a SetAttr merges into the object's latest stamping record when that is
//!    a SetAttr (so no Store, and for a directory no entry change, lies between; later fields win,
//!    see [`proto::SetAttrs::merge`]). The merged record takes the new record's op, so a client
//!    that names the object's last op in its next base still names the right one.
//! 5. **Renames of offline-created objects fold** into the creation, which moves to the new name
//!    (when the rename replaces nothing, and nothing in between uses either name; across
//!    directories, when the target directory existed at creation, the object has no Link
//!    records (its other names stay in the creation's directory, and the server refuses links
//!    across directories) and, for a directory, no other rename lies between).

use proto::{Base, Mutation, ObjectId, Record, SetAttrs};
use rusqlite::Connection;

use crate::error::Result;
use crate::plan::Plan;
use crate::rows::{self, Row};
use crate::touch::{self, DIR, Kind, STAMP, SUBJECT, VICTIM};

const ALL: i64 = -1;

/// Decides what appending `record` does to the log. `last_name`: the caller knows a Remove
/// takes away the file's last name.
pub(crate) fn plan(c: &Connection, cell: &str, record: Record, last_name: bool) -> Result<Plan> {
    let mut plan = Plan::plain(cell, record);
    if !based_on_the_log(c, &plan)? {
        return Ok(plan);
    }
    let incoming = plan.incoming.mutation.clone();
    match &incoming {
        Mutation::Store { fid, .. } => supersede_stores(c, &mut plan, fid.object)?,
        Mutation::SetAttr { fid, set, .. } => merge_setattr(c, &mut plan, fid.object, set)?,
        Mutation::Remove { seen, .. } => removed(c, &mut plan, seen.object, last_name)?,
        Mutation::RemoveDir { object, .. } => removed(c, &mut plan, *object, true)?,
        Mutation::Rename { replaced: None, .. } => fold_rename(c, &mut plan, &incoming)?,
        _ => {}
    }
    Ok(plan)
}

/// Whether the incoming record's base names the last record of the log that stamps its object
/// (or the object has none). A client that sends anything else expects a conflict; rearranging
/// the log around it could make the record certify after all, so such a record is just appended.
fn based_on_the_log(c: &Connection, plan: &Plan) -> Result<bool> {
    let Some((object, base)) = touch::reference(&plan.incoming.mutation) else { return Ok(true) };
    let last = rows::last_stamp_before(c, &plan.cell, plan.volume, object, i64::MAX as u64)?;
    Ok(last.is_none_or(|op| *base == Base::AfterOp(op)))
}

fn is_kind(row: &Row, kind: Kind) -> bool {
    touch::kind(&row.record.mutation) == kind
}

/// Rule 1.
fn supersede_stores(c: &Connection, plan: &mut Plan, file: ObjectId) -> Result<()> {
    for row in rows::touching(c, &plan.cell, plan.volume, file, SUBJECT, 0)? {
        if is_kind(&row, Kind::Store) && !row.frozen {
            plan.delete(&row);
            plan.rule = "store replaces store";
        }
    }
    Ok(())
}

/// Rule 4.
fn merge_setattr(c: &Connection, plan: &mut Plan, object: ObjectId, set: &SetAttrs) -> Result<()> {
    let Some(last) = rows::last_touching(c, &plan.cell, plan.volume, object, STAMP)? else { return Ok(()) };
    if last.frozen {
        return Ok(());
    }
    let mut merged = last.record.clone();
    let Mutation::SetAttr { fid, set: earlier, .. } = &mut merged.mutation else { return Ok(()) };
    if fid.object != object {
        return Ok(());
    }
    earlier.merge(set);
    merged.op = plan.incoming.op;
    plan.rewrite(&last, merged);
    plan.absorb("setattrs merge", Some(last.seq));
    Ok(())
}

/// Rules 2 and 3: `object` loses a name (its last one, if `last_name`).
fn removed(c: &Connection, plan: &mut Plan, object: ObjectId, last_name: bool) -> Result<()> {
    let related = rows::touching(c, &plan.cell, plan.volume, object, ALL, 0)?;
    let linked = related.iter().any(|r| is_kind(r, Kind::Link) && touch::subject(&r.record.mutation) == object);
    if linked {
        return Ok(());
    }
    let creation =
        related.iter().find(|r| touch::is_creation(&r.record.mutation) && touch::subject(&r.record.mutation) == object);
    let only_its_own = related.iter().all(|r| {
        !r.frozen
            && touch::touches(&r.record.mutation)
                .iter()
                .any(|&(o, roles)| o == object && roles & SUBJECT != 0 && roles & (DIR | VICTIM) == 0)
    });
    match creation {
        Some(created) if only_its_own => {
            let is_dir = matches!(created.record.mutation, Mutation::MakeDir { .. });
            for row in &related {
                match &row.record.mutation {
                    Mutation::Rename { to, to_name, replaced: Some(seen), .. } => {
                        let mutation = if is_dir {
                            Mutation::RemoveDir { parent: *to, name: to_name.clone(), object: seen.object }
                        } else {
                            Mutation::Remove { parent: *to, name: to_name.clone(), seen: seen.clone() }
                        };
                        plan.rewrite(row, Record { op: row.record.op, mutation });
                    }
                    _ => plan.delete(row),
                }
            }
            plan.absorb("create … remove cancels", None);
        }
        // Created by the log, with no Link records: it never had another name.
        _ if last_name || creation.is_some() => {
            for row in &related {
                let moot = is_kind(row, Kind::Store) || is_kind(row, Kind::SetAttr);
                if moot && !row.frozen && touch::subject(&row.record.mutation) == object {
                    plan.delete(row);
                    plan.rule = "remove makes changes moot";
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rule 5.
fn fold_rename(c: &Connection, plan: &mut Plan, rename: &Mutation) -> Result<()> {
    let Mutation::Rename { from, from_name, object, to, to_name, replaced: None } = rename else { return Ok(()) };
    if from.volume != to.volume || (from == to && from_name == to_name) {
        return Ok(());
    }
    let subjects = rows::touching(c, &plan.cell, plan.volume, *object, SUBJECT, 0)?;
    let Some(created) = subjects.iter().find(|r| touch::is_creation(&r.record.mutation)) else { return Ok(()) };
    if created.frozen || touch::location(&created.record.mutation) != Some((*from, from_name)) {
        return Ok(());
    }
    let after = created.seq + 1;
    // Neither name may be used between the creation and the rename.
    for dir in [from.object, to.object] {
        for row in rows::touching(c, &plan.cell, plan.volume, dir, DIR, after)? {
            let uses = touch::entries(&row.record.mutation)
                .iter()
                .any(|&(d, n)| (d == from.object && n == from_name) || (d == to.object && n == to_name));
            if uses {
                return Ok(());
            }
        }
    }
    if from != to {
        // Its links name the directory it was created in, and all names of a file live in one
        // directory: moved there before them, the file would take them across directories.
        if subjects.iter().any(|r| is_kind(r, Kind::Link)) {
            return Ok(());
        }
        // The target directory must exist when the object is created there...
        let target_created = rows::touching(c, &plan.cell, plan.volume, to.object, SUBJECT, after)?
            .iter()
            .any(|r| touch::is_creation(&r.record.mutation));
        if target_created {
            return Ok(());
        }
        // ...and moving a directory earlier must not change what other renames would loop on.
        let is_dir = matches!(created.record.mutation, Mutation::MakeDir { .. });
        if is_dir && rows::any_of_kind_after(c, &plan.cell, plan.volume, Kind::Rename, created.seq)? {
            return Ok(());
        }
    }
    let mut moved = created.record.clone();
    touch::relocate(&mut moved.mutation, *to, to_name);
    let created = created.clone();
    plan.rewrite(&created, moved);
    plan.absorb("rename folds into create", Some(created.seq));
    Ok(())
}
