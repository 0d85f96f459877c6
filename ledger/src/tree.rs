//! Placeholder: written by its owner on a branch.
