//! A task category: a titled group of tasks.

use super::{Check, MAX_NAME_CHARS, Stored};
use crate::{api, error::Reason};

const MAX_URL_CHARS: usize = 2048;

/// The writable fields of a task category, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskCategoryFields {
    /// Unique in the tenant (ignoring case) among live categories.
    pub title: String,
    /// What belongs in it.
    pub description: String,
    /// An http(s) image URL.
    pub image_url: String,
    /// Lower sorts first.
    pub sort_order: i32,
}

/// A stored task category.
pub type TaskCategory = Stored<TaskCategoryFields>;

impl TaskCategoryFields {
    /// Validates a category as sent by a caller.
    pub fn parse(check: &mut Check, category: &api::TaskCategory) -> TaskCategoryFields {
        let image_url = check.optional_text("image_url", &category.image_url, MAX_URL_CHARS);
        if !(image_url.is_empty() || image_url.starts_with("https://") || image_url.starts_with("http://")) {
            let path = check.path("image_url");
            check.fail("image_url", Reason::FieldInvalid, format!("{path} must be an http or https URL."));
        }
        TaskCategoryFields {
            title: check.required_text("title", &category.title, MAX_NAME_CHARS),
            description: check.optional_text("description", &category.description, MAX_NAME_CHARS),
            image_url,
            sort_order: category.sort_order,
        }
    }
}
