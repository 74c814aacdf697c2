//! Keeping bases true when the optimiser changes the log.
//!
//! The server certifies `Base::AfterOp(op)` against the last op that stamped the object (see
//! [`crate::touch`]). A record's base therefore names the latest earlier record in the log that
//! stamps the same object, or, when there is none, the state before the log (the version the
//! client saw, or an op already reintegrated). When a plan deletes, moves or re-ops records, the
//! stamp order of some objects changes, and every remaining record based on one of them is
//! re-derived here: it gets the latest stamp before it in the new log, or the pre-log base.
//!
//! The pre-log base of an object is known from the first record that carries a base for it
//! before any stamp (which is how a new Store inherits the base of the earliest Store it
//! replaced). A directory, though, is usually stamped by entry changes that carry no base for
//! it; if a plan would leave a record based on a directory with no stamp before it and no known
//! pre-log base, the plan is rejected and the record is simply appended. Frozen records are
//! never rewritten: a plan that would have to is rejected too.
//!
//! Only bases that were consistent with the old log are re-derived; a record whose base was
//! already stale (a client that expects a conflict) keeps it.

use std::collections::{BTreeMap, BTreeSet};

use proto::{Base, ObjectId, OpId, Record};
use rusqlite::Connection;

use crate::error::Result;
use crate::plan::Plan;
use crate::rows;
use crate::touch::{self, REF, STAMP};

/// Position of the incoming record: after everything stored.
const INCOMING: u64 = u64::MAX;

/// One record as the walk over an object's history sees it.
struct Step {
    old: Record,
    new: Option<Record>,
    frozen: bool,
}

/// Re-derives the bases the plan affects. Returns false if the plan cannot be carried out.
pub(crate) fn settle(c: &Connection, plan: &mut Plan) -> Result<bool> {
    let lo = plan.before.keys().next().copied().unwrap_or(INCOMING);
    let mut affected = BTreeSet::new();
    for (seq, row) in &plan.before {
        affected.extend(touch::stamped(&row.record.mutation));
        if let Some(Some(after)) = plan.after.get(seq) {
            affected.extend(touch::stamped(&after.mutation));
        }
    }
    affected.extend(touch::stamped(&plan.incoming.mutation));
    if let Some(append) = &plan.append {
        affected.extend(touch::stamped(&append.mutation));
    }
    for object in affected {
        if !settle_object(c, plan, object, lo)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn settle_object(c: &Connection, plan: &mut Plan, object: ObjectId, lo: u64) -> Result<bool> {
    let (cell, volume) = (plan.cell.clone(), plan.volume);
    let prior = rows::last_stamp_before(c, &cell, volume, object, lo)?;
    let mut prelog = match prior {
        Some(_) => None,
        None => rows::first_ref_before(c, &cell, volume, object, lo)?
            .and_then(|row| touch::reference(&row.record.mutation).map(|(_, base)| base.clone())),
    };

    // The object's history from `lo` on, before and after the plan.
    let mut steps: BTreeMap<u64, Step> = BTreeMap::new();
    let mut stored = BTreeMap::new();
    for row in rows::touching(c, &cell, volume, object, STAMP | REF, lo)? {
        let new = plan.current(&row).cloned();
        steps.insert(row.seq, Step { old: row.record.clone(), new, frozen: row.frozen });
        stored.insert(row.seq, row);
    }
    for (seq, row) in &plan.before {
        let new = plan.after.get(seq).cloned().flatten();
        let involved = [Some(&row.record), new.as_ref()].into_iter().flatten().any(|r| involves(r, object));
        if involved && !steps.contains_key(seq) {
            steps.insert(*seq, Step { old: row.record.clone(), new, frozen: row.frozen });
            stored.insert(*seq, row.clone());
        }
    }
    steps.insert(INCOMING, Step { old: plan.incoming.clone(), new: plan.append.clone(), frozen: false });

    // What each base had to be in the old log.
    let mut expected: BTreeMap<u64, Base> = BTreeMap::new();
    let mut last: Option<OpId> = prior;
    for (&seq, step) in &steps {
        let old = &step.old;
        if let Some((o, base)) = touch::reference(&old.mutation)
            && o == object
        {
            let want = match last {
                Some(op) => Base::AfterOp(op),
                None => prelog.get_or_insert_with(|| base.clone()).clone(),
            };
            expected.insert(seq, want);
        }
        if touch::stamps(&old.mutation, object) {
            last = Some(old.op);
        }
    }

    // What it has to be in the new one.
    let mut last: Option<OpId> = prior;
    for (&seq, step) in &mut steps {
        let Some(new) = &mut step.new else { continue };
        let op = new.op;
        let stamps = touch::stamps(&new.mutation, object);
        if let Some((o, base)) = touch::reference(&new.mutation)
            && o == object
        {
            let consistent = expected.get(&seq).is_none_or(|was| was == base);
            let want = match last {
                Some(op) => Some(Base::AfterOp(op)),
                None => prelog.clone(),
            };
            if consistent && want.as_ref() != Some(base) {
                let Some(want) = want else { return Ok(false) };
                if step.frozen {
                    return Ok(false);
                }
                if let Some(b) = touch::reference_mut(&mut new.mutation) {
                    *b = want;
                }
                if seq == INCOMING {
                    plan.append = Some(new.clone());
                } else if let Some(row) = stored.get(&seq) {
                    plan.rewrite(row, new.clone());
                }
            }
        }
        if stamps {
            last = Some(op);
        }
    }
    Ok(true)
}

fn involves(record: &Record, object: ObjectId) -> bool {
    touch::touches(&record.mutation).iter().any(|&(o, roles)| o == object && roles & (STAMP | REF) != 0)
}
