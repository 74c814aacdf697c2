//! A plan: what one append does to the log, decided before anything is written.
//!
//! The optimiser ([`crate::optimise`]) fills a plan with the records it deletes or rewrites and
//! says whether the incoming record is stored; [`crate::rebase`] then fixes the bases the change
//! invalidates (or rejects the plan); only then is the plan written, in the append's transaction.

use std::collections::BTreeMap;

use proto::{Record, Timestamp, VolumeId};
use rusqlite::Connection;

use crate::error::Result;
use crate::rows::{self, Row};

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub cell: String,
    pub volume: VolumeId,
    /// Every stored record the plan changes, as it was.
    pub before: BTreeMap<u64, Row>,
    /// What becomes of each of them: rewritten, or deleted (`None`).
    pub after: BTreeMap<u64, Option<Record>>,
    /// The record being appended, as the caller gave it.
    pub incoming: Record,
    /// What is appended: the incoming record (perhaps with a new base), or nothing.
    pub append: Option<Record>,
    /// When the incoming record was folded into a stored one: that one's seq.
    pub absorbed_into: Option<u64>,
    /// Which optimisation made the plan, for logs.
    pub rule: &'static str,
}

impl Plan {
    /// Just append the record.
    pub fn plain(cell: &str, record: Record) -> Plan {
        Plan {
            cell: cell.to_string(),
            volume: record.mutation.volume(),
            before: BTreeMap::new(),
            after: BTreeMap::new(),
            append: Some(record.clone()),
            incoming: record,
            absorbed_into: None,
            rule: "append",
        }
    }

    pub fn is_plain(&self) -> bool {
        self.after.is_empty() && self.append.as_ref() == Some(&self.incoming)
    }

    pub fn delete(&mut self, row: &Row) {
        self.before.entry(row.seq).or_insert_with(|| row.clone());
        self.after.insert(row.seq, None);
    }

    pub fn rewrite(&mut self, row: &Row, record: Record) {
        self.before.entry(row.seq).or_insert_with(|| row.clone());
        self.after.insert(row.seq, Some(record));
    }

    /// The incoming record is not stored; `into` is the record that now carries its effect.
    pub fn absorb(&mut self, rule: &'static str, into: Option<u64>) {
        self.rule = rule;
        self.append = None;
        self.absorbed_into = into;
    }

    /// The record a stored seq holds once the plan is carried out (`None`: deleted).
    pub fn current<'a>(&'a self, row: &'a Row) -> Option<&'a Record> {
        match self.after.get(&row.seq) {
            Some(after) => after.as_ref(),
            None => Some(&row.record),
        }
    }

    /// Writes the plan; returns the seq to answer the append with.
    pub fn execute(&self, c: &Connection, now: Timestamp) -> Result<Option<u64>> {
        for (&seq, after) in &self.after {
            match after {
                None => rows::delete(c, seq)?,
                Some(record) => rows::update(c, &self.cell, seq, record)?,
            }
        }
        match &self.append {
            Some(record) => Ok(Some(rows::insert(c, &self.cell, record, now)?)),
            None => Ok(self.absorbed_into),
        }
    }
}
