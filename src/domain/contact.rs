//! A contact: its validated fields and rules (docs/contacts.md).

use serde::{Deserialize, Serialize};

use super::{Check, MAX_NAME_CHARS, Stored, custom_fields, rich_text::RichText};
use crate::{api, error::Reason};

/// Most emails of a contact.
pub const MAX_EMAILS: usize = 16;
/// Most phones of a contact.
pub const MAX_PHONES: usize = 16;
const MAX_LABEL_CHARS: usize = 64;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_PHONE_CHARS: usize = 64;

/// An email address of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The validated address.
    pub address: String,
    /// Its label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// Whether it is the main one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub primary: bool,
}

/// A phone number of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// The number as dialled.
    pub number: String,
    /// Its label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
}

/// The writable fields of a contact, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactFields {
    /// Required display name.
    pub display_name: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Organization.
    pub organization: String,
    /// Job title.
    pub job_title: String,
    /// Emails.
    pub emails: Vec<Email>,
    /// Phones.
    pub phones: Vec<Phone>,
    /// Upstream id, unique per tenant among undeleted contacts.
    pub external_id: Option<String>,
    /// Notes.
    pub notes: RichText,
    /// Caller-defined fields, as a JSON object text.
    pub custom_fields: custom_fields::CustomFields,
}

impl ContactFields {
    /// Validates a contact as sent by a caller; violations are reported under
    /// `check`'s prefix (such as `contact.`). Output-only fields are ignored.
    pub fn parse(check: &mut Check, contact: &api::Contact) -> ContactFields {
        let display_name = check.required_text("display_name", &contact.display_name, MAX_NAME_CHARS);
        let given_name = check.optional_text("given_name", &contact.given_name, MAX_NAME_CHARS);
        let family_name = check.optional_text("family_name", &contact.family_name, MAX_NAME_CHARS);
        let organization = check.optional_text("organization", &contact.organization, MAX_NAME_CHARS);
        let job_title = check.optional_text("job_title", &contact.job_title, MAX_NAME_CHARS);
        let external_id = check.optional_text("external_id", &contact.external_id, MAX_NAME_CHARS);
        let emails = if check.max_items("emails", contact.emails.len(), MAX_EMAILS) {
            parse_emails(check, &contact.emails)
        } else {
            Vec::new()
        };
        let phones = if check.max_items("phones", contact.phones.len(), MAX_PHONES) {
            parse_phones(check, &contact.phones)
        } else {
            Vec::new()
        };
        let notes = match &contact.notes {
            Some(notes) => RichText::parse(check, "notes", notes.format, &notes.raw),
            None => RichText::default(),
        };
        let custom_fields = custom_fields::parse(check, "custom_fields", contact.custom_fields.as_ref());
        ContactFields {
            display_name,
            given_name,
            family_name,
            organization,
            job_title,
            emails,
            phones,
            external_id: Some(external_id).filter(|e| !e.is_empty()),
            notes,
            custom_fields,
        }
    }
}

fn parse_emails(check: &mut Check, emails: &[api::EmailAddress]) -> Vec<Email> {
    let mut primaries = 0;
    let parsed = emails
        .iter()
        .enumerate()
        .map(|(i, email)| {
            let field = format!("emails[{i}].address");
            let address = check.required_text(&field, &email.address, MAX_EMAIL_CHARS);
            if !address.is_empty() && !email_address::EmailAddress::is_valid(&address) {
                let path = check.path(&field);
                check.fail(&field, Reason::FieldInvalid, format!("{path} {address:?} is not a valid email address."));
            }
            let label = check.optional_text(&format!("emails[{i}].label"), &email.label, MAX_LABEL_CHARS);
            primaries += usize::from(email.primary);
            Email { address, label, primary: email.primary }
        })
        .collect();
    if primaries > 1 {
        let path = check.path("emails");
        check.fail(
            "emails",
            Reason::FieldInvalid,
            format!("{path} has {primaries} primary addresses; at most one may be primary."),
        );
    }
    parsed
}

fn parse_phones(check: &mut Check, phones: &[api::PhoneNumber]) -> Vec<Phone> {
    phones
        .iter()
        .enumerate()
        .map(|(i, phone)| {
            let field = format!("phones[{i}].number");
            let number = check.required_text(&field, &phone.number, MAX_PHONE_CHARS);
            let digits = number.chars().filter(char::is_ascii_digit).count();
            let allowed = number.chars().all(|c| c.is_ascii_digit() || " +-().//x".contains(c));
            if !number.is_empty() && (!allowed || digits < 3) {
                let path = check.path(&field);
                check.fail(
                    &field,
                    Reason::FieldInvalid,
                    format!("{path} {number:?} is not a phone number: use digits, spaces and + - ( ) . / only."),
                );
            }
            let label = check.optional_text(&format!("phones[{i}].label"), &phone.label, MAX_LABEL_CHARS);
            Phone { number, label }
        })
        .collect()
}

/// A stored contact: its fields and what the server keeps about them.
pub type Contact = Stored<ContactFields>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn violations(contact: &api::Contact) -> Vec<(String, Reason)> {
        let mut check = Check::new("contact.");
        ContactFields::parse(&mut check, contact);
        match check.finish(()) {
            Ok(()) => Vec::new(),
            Err(Error::Invalid(v)) => v.into_iter().map(|v| (v.field, v.reason)).collect(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_valid_contact_passes() {
        let contact = api::Contact {
            display_name: " Ada Lovelace ".into(),
            emails: vec![api::EmailAddress { address: "ada@example.com".into(), label: "work".into(), primary: true }],
            phones: vec![api::PhoneNumber { number: "+44 (20) 7946-0958".into(), label: String::new() }],
            ..Default::default()
        };
        assert!(violations(&contact).is_empty());
    }

    #[test]
    fn each_problem_is_named() {
        let contact = api::Contact {
            display_name: "".into(),
            emails: vec![
                api::EmailAddress { address: "not-an-email".into(), label: String::new(), primary: true },
                api::EmailAddress { address: "b@example.com".into(), label: String::new(), primary: true },
            ],
            phones: vec![api::PhoneNumber { number: "call me".into(), label: String::new() }],
            ..Default::default()
        };
        assert_eq!(
            violations(&contact),
            vec![
                ("contact.display_name".to_string(), Reason::FieldRequired),
                ("contact.emails[0].address".to_string(), Reason::FieldInvalid),
                ("contact.emails".to_string(), Reason::FieldInvalid),
                ("contact.phones[0].number".to_string(), Reason::FieldInvalid),
            ]
        );
    }

    #[test]
    fn too_many_emails_is_refused() {
        let email = api::EmailAddress { address: "a@example.com".into(), label: String::new(), primary: false };
        let contact = api::Contact { display_name: "A".into(), emails: vec![email; 17], ..Default::default() };
        assert_eq!(violations(&contact), vec![("contact.emails".to_string(), Reason::FieldInvalid)]);
    }
}
