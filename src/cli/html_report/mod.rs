//! `kubectl zetaback report -o html`: a compliance report people would rather look at than
//! read — one self-contained HTML file per run, with inline charts. [`model`] gathers the
//! numbers from the API objects and the store's catalogue rows; [`render`] turns them into
//! HTML. Both are pure; the command in `commands.rs` fetches.

pub mod model;
pub mod render;
