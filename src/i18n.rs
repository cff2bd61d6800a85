//! The caller's language and the texts the server writes in it: the
//! `accept-language` a call carries, the choice among the languages a
//! resource has names in (fr-CA falls back to fr, then to en), the names of
//! the system activity types, and the revision summaries ("Priority changed
//! from Normal to High") in English, German, French and Spanish. Caller text
//! quoted in a summary is escaped, so a summary is Markdown that never
//! renders a caller's value as markup or HTML.

use fluent_langneg::{LanguageIdentifier, NegotiationStrategy, negotiate::filter_matches};
use serde_json::Value as Json;

use crate::api;

/// An `accept-language` longer than this is ignored as a whole.
const MAX_HEADER_BYTES: usize = 1024;
/// Tags of an `accept-language` past this many are ignored.
const MAX_TAGS: usize = 16;
/// Characters of a caller's text a summary quotes, the "…" included.
const MAX_QUOTED_CHARS: usize = 80;
/// Characters a summary backslash-escapes in caller text: everything that
/// starts or ends Markdown (CommonMark and the extensions pulldown-cmark
/// offers: tables, strikethrough, math, superscript) or HTML.
const MARKDOWN_SPECIALS: &str = "\\`*_[]<>#|~&$^";

/// The languages a caller asked for (accept-language), best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Languages {
    requested: Vec<LanguageIdentifier>,
}

impl Languages {
    /// Parses an accept-language header value ("fr-CA,fr;q=0.9,en;q=0.5"),
    /// ordered by weight (equal weights keep their order); garbage or empty
    /// is no preference (English). Bounded: at most 16 tags are considered,
    /// a header longer than 1024 bytes is ignored, `*` and `q=0` are skipped.
    pub fn parse(header: &str) -> Languages {
        if header.len() > MAX_HEADER_BYTES {
            return Languages::default();
        }
        let mut weighted: Vec<(u16, LanguageIdentifier)> =
            header.split(',').take(MAX_TAGS).filter_map(weighted_tag).collect();
        weighted.sort_by_key(|&(quality, _)| std::cmp::Reverse(quality));
        Languages { requested: weighted.into_iter().map(|(_, id)| id).collect() }
    }

    /// From gRPC metadata: `accept-language` (missing or non-ASCII is no
    /// preference).
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Languages {
        metadata.get("accept-language").and_then(|value| value.to_str().ok()).map(Languages::parse).unwrap_or_default()
    }

    /// Of `available` language tags (the keys of an ActivityType's
    /// localized_names: any BCP 47 tags, compared case-insensitively), the one
    /// to show, as given: for each requested tag in order, an exact match,
    /// else one it falls back to (fr-CA -> fr), else a more specific one of its
    /// language (fr -> fr-CA); when no requested tag matches, English (en,
    /// else an en-*); else `None`. Unparsable available tags are skipped.
    pub fn pick<'a>(&self, available: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        let available: Vec<Available<'a>> = available.into_iter().filter_map(Available::parse).collect();
        lookup(&self.requested, &available).or_else(|| lookup(&english(), &available))
    }

    /// The catalog language of server texts: the first of en, de, fr, es
    /// that [`Languages::pick`] would choose, else en.
    pub fn texts(&self) -> Lang {
        self.pick(Lang::ALL.map(Lang::tag))
            .and_then(|tag| Lang::ALL.into_iter().find(|lang| lang.tag() == tag))
            .unwrap_or(Lang::En)
    }
}

/// One entry of an accept-language ("fr;q=0.9") as its weight in thousandths
/// and its tag; `None` for a wildcard, a weight of 0 or anything malformed.
fn weighted_tag(entry: &str) -> Option<(u16, LanguageIdentifier)> {
    let mut parts = entry.split(';');
    let tag = parts.next()?.trim();
    let mut quality = 1000;
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("q") {
            quality = parse_quality(value.trim())?;
        }
    }
    if quality == 0 || tag.is_empty() || tag == "*" {
        return None;
    }
    LanguageIdentifier::try_from_bytes(tag.as_bytes()).ok().map(|id| (quality, id))
}

/// A qvalue ("0.8") in thousandths; `None` outside 0 to 1.
fn parse_quality(value: &str) -> Option<u16> {
    let quality: f32 = value.parse().ok()?;
    (0.0..=1.0).contains(&quality).then(|| (quality * 1000.0).round() as u16)
}

/// An available tag as given, with its parsed form for the negotiation.
struct Available<'a> {
    tag: &'a str,
    id: LanguageIdentifier,
}

impl<'a> Available<'a> {
    fn parse(tag: &'a str) -> Option<Available<'a>> {
        LanguageIdentifier::try_from_bytes(tag.trim().as_bytes()).ok().map(|id| Available { tag, id })
    }
}

impl AsRef<LanguageIdentifier> for Available<'_> {
    fn as_ref(&self) -> &LanguageIdentifier {
        &self.id
    }
}

/// The best of `available` for `requested`: fluent-langneg's lookup tries
/// each requested tag in order, first exactly, then the available tags as
/// ranges (fr matches a request for fr-CA), then likely subtags and the
/// request's language alone (a request for fr matches fr-CA).
fn lookup<'a>(requested: &[LanguageIdentifier], available: &[Available<'a>]) -> Option<&'a str> {
    filter_matches(requested, available, NegotiationStrategy::Lookup).first().map(|found| found.tag)
}

/// English, the last resort of every choice.
fn english() -> Vec<LanguageIdentifier> {
    LanguageIdentifier::try_from_bytes(b"en").into_iter().collect()
}

/// A language the server writes its own texts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    /// English, the default.
    En,
    /// German.
    De,
    /// French.
    Fr,
    /// Spanish.
    Es,
}

impl Lang {
    /// Every language, in the order of the catalog rows.
    pub const ALL: [Lang; 4] = [Lang::En, Lang::De, Lang::Fr, Lang::Es];

    /// The BCP 47 tag: "en", "de", "fr" or "es".
    pub const fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
            Lang::Fr => "fr",
            Lang::Es => "es",
        }
    }

    /// This language's entry of a catalog row written [en, de, fr, es].
    fn of<T: Copy>(self, row: [T; 4]) -> T {
        let [en, de, fr, es] = row;
        match self {
            Lang::En => en,
            Lang::De => de,
            Lang::Fr => fr,
            Lang::Es => es,
        }
    }
}

/// One of the activity types every tenant starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemType {
    /// The key activities name it by.
    pub key: &'static str,
    /// Where it sorts in lists.
    pub sort_order: i32,
    /// (tag, name) for en, de, fr and es, in that order.
    pub names: [(&'static str, &'static str); 4],
}

impl SystemType {
    /// The English name (the type's display_name).
    pub fn english(&self) -> &'static str {
        self.names[0].1
    }
}

/// A system type from its names written [en, de, fr, es].
const fn system(key: &'static str, sort_order: i32, names: [&'static str; 4]) -> SystemType {
    let [en, de, fr, es] = names;
    SystemType {
        key,
        sort_order,
        names: [(Lang::En.tag(), en), (Lang::De.tag(), de), (Lang::Fr.tag(), fr), (Lang::Es.tag(), es)],
    }
}

/// The system types, in sort order.
pub const SYSTEM_TYPES: [SystemType; 8] = [
    system("note", 10, ["Note", "Notiz", "Note", "Nota"]),
    system("call", 20, ["Call", "Anruf", "Appel", "Llamada"]),
    system("meeting", 30, ["Meeting", "Besprechung", "Réunion", "Reunión"]),
    system("email", 40, ["Email", "E-Mail", "E-mail", "Correo electrónico"]),
    system("sms", 50, ["SMS", "SMS", "SMS", "SMS"]),
    system("letter", 60, ["Letter", "Brief", "Lettre", "Carta"]),
    system("comment", 70, ["Comment", "Kommentar", "Commentaire", "Comentario"]),
    system("task", 80, ["Task", "Aufgabe", "Tâche", "Tarea"]),
];

/// The summary of one activity revision in `lang`, as Markdown-safe text:
/// every caller value it quotes is backslash-escaped, so it never renders as
/// markup or HTML. `kind` is the proto's RevisionKind number; `diff` is the
/// stored diff JSON (as `journal::diff` writes it). An UPDATED revision gets
/// one paragraph per changed field, in diff order.
pub fn summary(lang: Lang, kind: i32, diff: &str) -> String {
    use api::RevisionKind as Kind;
    let line = match Kind::try_from(kind) {
        Ok(Kind::Created) => ["Activity created", "Aktivität erstellt", "Activité créée", "Actividad creada"],
        Ok(Kind::Deleted) => ["Activity deleted", "Aktivität gelöscht", "Activité supprimée", "Actividad eliminada"],
        Ok(Kind::Undeleted) => {
            ["Activity restored", "Aktivität wiederhergestellt", "Activité restaurée", "Actividad restaurada"]
        }
        Ok(Kind::Completed) => ["Task completed", "Aufgabe erledigt", "Tâche terminée", "Tarea completada"],
        Ok(Kind::Reopened) => ["Task reopened", "Aufgabe wieder geöffnet", "Tâche rouverte", "Tarea reabierta"],
        Ok(Kind::Updated) => {
            let lines: Vec<String> = entries(diff).iter().map(|entry| field_line(lang, entry)).collect();
            if !lines.is_empty() {
                return lines.join("\n\n");
            }
            ACTIVITY_CHANGED
        }
        Ok(Kind::ParticipantAdded) => return participants(lang, true, &entries(diff)),
        Ok(Kind::ParticipantRemoved) => return participants(lang, false, &entries(diff)),
        Ok(Kind::Unspecified) | Err(_) => ACTIVITY_CHANGED,
    };
    lang.of(line).to_owned()
}

/// What a revision of unknown kind, or an update without a readable diff, says.
const ACTIVITY_CHANGED: [&str; 4] =
    ["Activity changed", "Aktivität geändert", "Activité modifiée", "Actividad modificada"];

/// One field of a stored diff.
struct Entry {
    field: String,
    old: Json,
    new: Json,
}

/// The entries of a stored diff; anything unreadable is left out.
fn entries(diff: &str) -> Vec<Entry> {
    let Ok(Json::Array(items)) = serde_json::from_str::<Json>(diff) else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Json::Object(mut map) = item else { return None };
            let Some(Json::String(field)) = map.remove("field") else { return None };
            Some(Entry {
                field,
                old: map.remove("old_value").unwrap_or(Json::Null),
                new: map.remove("new_value").unwrap_or(Json::Null),
            })
        })
        .collect()
}

// --- Participants -------------------------------------------------------

/// The lines of a PARTICIPANT_ADDED (`added`) or PARTICIPANT_REMOVED
/// revision: one per participant the `participants` diff gained or lost.
fn participants(lang: Lang, added: bool, entries: &[Entry]) -> String {
    let changed: Vec<(&str, &str)> = match entries.iter().find(|entry| entry.field == "participants") {
        Some(entry) => {
            let (old, new) = (members(&entry.old), members(&entry.new));
            let (before, after) = if added { (old, new) } else { (new, old) };
            after.into_iter().filter(|member| !before.contains(member)).collect()
        }
        None => Vec::new(),
    };
    if changed.is_empty() {
        let line = if added {
            ["Participant added", "Teilnehmer hinzugefügt", "Participant ajouté", "Participante añadido"]
        } else {
            ["Participant removed", "Teilnehmer entfernt", "Participant retiré", "Participante eliminado"]
        };
        return lang.of(line).to_owned();
    }
    changed
        .into_iter()
        .map(|(contact, role)| participant_line(lang, added, &escape(contact), &role_name(lang, role)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The (contact_id, role) pairs of a `participants` value; a missing role is "target".
fn members(value: &Json) -> Vec<(&str, &str)> {
    let Some(items) = value.as_array() else { return Vec::new() };
    items
        .iter()
        .map(|item| {
            let contact = item.get("contact_id").and_then(Json::as_str).unwrap_or_default();
            let role = item.get("role").and_then(Json::as_str).filter(|role| !role.is_empty()).unwrap_or("target");
            (contact, role)
        })
        .collect()
}

/// One participant added or removed; `contact` and `role` are ready to print.
fn participant_line(lang: Lang, added: bool, contact: &str, role: &str) -> String {
    match (lang, added) {
        (Lang::En, true) => format!("Participant {contact} added as {role}"),
        (Lang::En, false) => format!("Participant {contact} removed ({role})"),
        (Lang::De, true) => format!("Teilnehmer {contact} als {role} hinzugefügt"),
        (Lang::De, false) => format!("Teilnehmer {contact} entfernt ({role})"),
        (Lang::Fr, true) => format!("Participant {contact} ajouté comme {role}"),
        (Lang::Fr, false) => format!("Participant {contact} retiré ({role})"),
        (Lang::Es, true) => format!("Participante {contact} añadido como {role}"),
        (Lang::Es, false) => format!("Participante {contact} eliminado ({role})"),
    }
}

/// The well-known participant roles, [en, de, fr, es].
const ROLES: &[(&str, [&str; 4])] = &[
    ("target", ["target", "Ziel", "cible", "destinatario"]),
    ("source", ["source", "Quelle", "source", "origen"]),
    ("assignee", ["assignee", "Zuständige", "responsable", "responsable"]),
    ("attendee", ["attendee", "Teilnehmer", "participant", "asistente"]),
    ("organizer", ["organizer", "Organisator", "organisateur", "organizador"]),
];

/// A role in `lang`: a well-known one translated, any other as its key.
fn role_name(lang: Lang, role: &str) -> String {
    match ROLES.iter().find(|(key, _)| *key == role) {
        Some((_, names)) => lang.of(*names).to_owned(),
        None => escape(role),
    }
}

// --- Field changes ------------------------------------------------------

/// The grammatical gender and number of a field's label, which a French or
/// Spanish participle after it agrees with.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// Masculine singular ("Sujet modifié", "Asunto cambiado").
    Masc,
    /// Feminine singular ("Priorité modifiée", "Prioridad cambiada").
    Fem,
    /// Masculine plural ("Détails modifiés", "Detalles cambiados").
    MascPl,
}

/// How a field's values read in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Caller text or a key, quoted (objects and lists are never printed).
    Text,
    /// An enum name (STATUS_*, PRIORITY_*, MEDIUM_*), translated.
    Enum,
    /// A timestamp, shown as stored (RFC 3339).
    Time,
    /// A Duration ("3600s"), shown as "1 h", "90 min" or "45 s".
    Duration,
    /// A bool: Yes or No; a missing one is false.
    Flag,
    /// A number of minutes.
    Minutes,
}

/// A field's label in each language and how its values read.
struct Field {
    name: &'static str,
    kind: ValueKind,
    /// The label, [en, de, fr, es].
    labels: [&'static str; 4],
    /// The French label's form.
    fr: Form,
    /// The Spanish label's form.
    es: Form,
}

const fn field(name: &'static str, kind: ValueKind, labels: [&'static str; 4], fr: Form, es: Form) -> Field {
    Field { name, kind, labels, fr, es }
}

/// The labels of every writable field of an activity, a task and an
/// activity type; a field not listed is shown under its name.
const FIELDS: &[Field] = {
    use Form::{Fem, Masc, MascPl};
    use ValueKind::{Duration, Enum, Flag, Minutes, Text, Time};
    &[
        // Activity
        field("type", Text, ["Type", "Typ", "Type", "Tipo"], Masc, Masc),
        field("subject", Text, ["Subject", "Betreff", "Sujet", "Asunto"], Masc, Masc),
        field("details", Text, ["Details", "Details", "Détails", "Detalles"], MascPl, MascPl),
        field("status", Enum, ["Status", "Status", "Statut", "Estado"], Masc, Masc),
        field("priority", Enum, ["Priority", "Priorität", "Priorité", "Prioridad"], Fem, Fem),
        field("occur_time", Time, ["Date", "Datum", "Date", "Fecha"], Fem, Fem),
        field("due_time", Time, ["Due date", "Fälligkeit", "Échéance", "Vencimiento"], Fem, Masc),
        field("duration", Duration, ["Duration", "Dauer", "Durée", "Duración"], Fem, Fem),
        field("location", Text, ["Location", "Ort", "Lieu", "Lugar"], Masc, Masc),
        field(
            "phone_number",
            Text,
            ["Phone number", "Telefonnummer", "Numéro de téléphone", "Número de teléfono"],
            Masc,
            Masc,
        ),
        field("medium", Enum, ["Channel", "Kanal", "Canal", "Canal"], Masc, Masc),
        field(
            "parent_id",
            Text,
            ["Parent activity", "Übergeordnete Aktivität", "Activité parente", "Actividad principal"],
            Fem,
            Fem,
        ),
        field(
            "source_contact_id",
            Text,
            ["Source contact", "Quellkontakt", "Contact source", "Contacto de origen"],
            Masc,
            Masc,
        ),
        field("assignee", Text, ["Assignee", "Zuständigkeit", "Attribution", "Asignación"], Fem, Fem),
        field("participants", Text, ["Participants", "Teilnehmer", "Participants", "Participantes"], MascPl, MascPl),
        field(
            "related",
            Text,
            ["Related records", "Verknüpfte Datensätze", "Enregistrements liés", "Registros relacionados"],
            MascPl,
            MascPl,
        ),
        field(
            "custom_fields",
            Text,
            ["Custom fields", "Benutzerdefinierte Felder", "Champs personnalisés", "Campos personalizados"],
            MascPl,
            MascPl,
        ),
        field("is_test", Flag, ["Test activity", "Testaktivität", "Activité de test", "Actividad de prueba"], Fem, Fem),
        field("is_auto", Flag, ["Automated", "Automatisiert", "Création automatique", "Creación automática"], Fem, Fem),
        field("result", Text, ["Result", "Ergebnis", "Résultat", "Resultado"], Masc, Masc),
        // Task
        field("title", Text, ["Title", "Titel", "Titre", "Título"], Masc, Masc),
        field("description", Text, ["Description", "Beschreibung", "Description", "Descripción"], Fem, Fem),
        field("deadline", Time, ["Deadline", "Frist", "Échéance", "Fecha límite"], Fem, Fem),
        field(
            "responsible_user_id",
            Text,
            ["Responsible person", "Verantwortliche Person", "Responsable", "Responsable"],
            Masc,
            Masc,
        ),
        field("category_id", Text, ["Category", "Kategorie", "Catégorie", "Categoría"], Fem, Fem),
        field("contact_id", Text, ["Contact", "Kontakt", "Contact", "Contacto"], Masc, Masc),
        field(
            "notify_responsible",
            Flag,
            ["Notify responsible person", "Benachrichtigung", "Notification du responsable", "Aviso al responsable"],
            Fem,
            Masc,
        ),
        field("alert_minutes", Minutes, ["Reminder", "Erinnerung", "Rappel", "Recordatorio"], Masc, Masc),
        field("time_zone", Text, ["Time zone", "Zeitzone", "Fuseau horaire", "Zona horaria"], Masc, Fem),
        field("recurrence", Text, ["Recurrence", "Wiederholung", "Récurrence", "Recurrencia"], Fem, Fem),
        // Activity type
        field("display_name", Text, ["Name", "Name", "Nom", "Nombre"], Masc, Masc),
        field(
            "localized_names",
            Text,
            ["Translated names", "Übersetzte Namen", "Noms traduits", "Nombres traducidos"],
            MascPl,
            MascPl,
        ),
        field("sort_order", Text, ["Sort order", "Sortierung", "Ordre de tri", "Orden"], Masc, Masc),
    ]
};

/// The enum values a summary translates, [en, de, fr, es]. French and
/// Spanish agree with their field's label (la priorité haute, el estado
/// completado).
const ENUM_VALUES: &[(&str, [&str; 4])] = &[
    ("STATUS_SCHEDULED", ["Scheduled", "Geplant", "Planifié", "Programado"]),
    ("STATUS_IN_PROGRESS", ["In progress", "In Bearbeitung", "En cours", "En curso"]),
    ("STATUS_COMPLETED", ["Completed", "Abgeschlossen", "Terminé", "Completado"]),
    ("STATUS_CANCELLED", ["Cancelled", "Abgesagt", "Annulé", "Cancelado"]),
    ("PRIORITY_LOW", ["Low", "Niedrig", "Basse", "Baja"]),
    ("PRIORITY_NORMAL", ["Normal", "Normal", "Normale", "Normal"]),
    ("PRIORITY_HIGH", ["High", "Hoch", "Haute", "Alta"]),
    ("PRIORITY_URGENT", ["Urgent", "Dringend", "Urgente", "Urgente"]),
    ("MEDIUM_IN_PERSON", ["In person", "Persönlich", "En personne", "En persona"]),
    ("MEDIUM_PHONE", ["Phone", "Telefon", "Téléphone", "Teléfono"]),
    ("MEDIUM_EMAIL", ["Email", "E-Mail", "E-mail", "Correo electrónico"]),
    ("MEDIUM_LETTER", ["Letter", "Brief", "Lettre", "Carta"]),
    ("MEDIUM_SMS", ["SMS", "SMS", "SMS", "SMS"]),
    ("MEDIUM_VIDEO", ["Video", "Video", "Vidéo", "Vídeo"]),
    ("MEDIUM_CHAT", ["Chat", "Chat", "Chat", "Chat"]),
    ("MEDIUM_SOCIAL", ["Social", "Soziale Medien", "Réseaux sociaux", "Redes sociales"]),
    ("MEDIUM_OTHER", ["Other", "Sonstiges", "Autre", "Otro"]),
];

/// A value as a summary can show it.
enum Shown {
    /// Not set: null, empty, or an enum's UNSPECIFIED.
    Absent,
    /// Ready to print.
    Value(String),
    /// Set, but an object or a list, which a summary does not print.
    Hidden,
}

/// What happened to a field, with its printable values.
enum Change {
    FromTo(String, String),
    Set(String),
    Cleared,
    Changed,
}

/// The verbs of a field change.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Changed,
    Set,
    Cleared,
}

/// The line of one changed field.
fn field_line(lang: Lang, entry: &Entry) -> String {
    let (label, kind, form) = match FIELDS.iter().find(|field| field.name == entry.field) {
        Some(field) => {
            let form = match lang {
                Lang::Fr => field.fr,
                Lang::Es => field.es,
                Lang::En | Lang::De => Form::Masc,
            };
            (lang.of(field.labels).to_owned(), field.kind, form)
        }
        None => (escape(&entry.field), ValueKind::Text, Form::Masc),
    };
    let change = match (shown(lang, kind, &entry.old), shown(lang, kind, &entry.new)) {
        (_, Shown::Absent) => Change::Cleared,
        (Shown::Value(old), Shown::Value(new)) => Change::FromTo(old, new),
        (Shown::Absent, Shown::Value(new)) => Change::Set(new),
        (Shown::Hidden, _) | (_, Shown::Hidden) => Change::Changed,
    };
    sentence(lang, &label, form, change)
}

/// "{Field} changed from {old} to {new}" and its kin, in `lang`.
fn sentence(lang: Lang, label: &str, form: Form, change: Change) -> String {
    let said = |verb| participle(lang, verb, form);
    match change {
        Change::FromTo(old, new) => {
            let changed = said(Verb::Changed);
            match lang {
                Lang::En => format!("{label} {changed} from {old} to {new}"),
                Lang::De => format!("{label} {changed} von {old} auf {new}"),
                Lang::Fr => format!("{label} {changed} de {old} à {new}"),
                Lang::Es => format!("{label} {changed} de {old} a {new}"),
            }
        }
        Change::Set(new) => {
            let set = said(Verb::Set);
            match lang {
                Lang::En => format!("{label} {set} to {new}"),
                Lang::De => format!("{label} auf {new} {set}"),
                Lang::Fr => format!("{label} {set} sur {new}"),
                Lang::Es => format!("{label} {set} en {new}"),
            }
        }
        Change::Cleared => format!("{label} {}", said(Verb::Cleared)),
        Change::Changed => format!("{label} {}", said(Verb::Changed)),
    }
}

/// A verb's participle in `lang`, agreeing in French and Spanish with `form`.
fn participle(lang: Lang, verb: Verb, form: Form) -> String {
    // English, German, and the French and Spanish stems.
    let (en, de, fr, es) = match verb {
        Verb::Changed => ("changed", "geändert", "modifié", "cambiad"),
        Verb::Set => ("set", "gesetzt", "défini", "establecid"),
        Verb::Cleared => ("cleared", "entfernt", "effacé", "borrad"),
    };
    match lang {
        Lang::En => en.to_owned(),
        Lang::De => de.to_owned(),
        Lang::Fr => {
            let ending = match form {
                Form::Masc => "",
                Form::Fem => "e",
                Form::MascPl => "s",
            };
            format!("{fr}{ending}")
        }
        Lang::Es => {
            let ending = match form {
                Form::Masc => "o",
                Form::Fem => "a",
                Form::MascPl => "os",
            };
            format!("{es}{ending}")
        }
    }
}

/// A diff value (proto3 JSON) as a summary shows it.
fn shown(lang: Lang, kind: ValueKind, value: &Json) -> Shown {
    match value {
        Json::Null if kind == ValueKind::Flag => Shown::Value(yes_no(lang, false)),
        Json::Null => Shown::Absent,
        Json::Bool(flag) => Shown::Value(yes_no(lang, *flag)),
        Json::Number(number) if kind == ValueKind::Minutes => Shown::Value(format!("{number} min")),
        Json::Number(number) => Shown::Value(number.to_string()),
        Json::String(text) if text.is_empty() => Shown::Absent,
        Json::String(text) => match kind {
            ValueKind::Enum => enum_value(lang, text),
            ValueKind::Time => Shown::Value(escape(text)),
            ValueKind::Duration => Shown::Value(duration(text)),
            // int64 and uint64 read as strings in proto3 JSON.
            ValueKind::Minutes => match text.parse::<i64>() {
                Ok(minutes) => Shown::Value(format!("{minutes} min")),
                Err(_) => Shown::Value(quote(lang, text)),
            },
            ValueKind::Text | ValueKind::Flag => Shown::Value(quote(lang, text)),
        },
        Json::Array(items) if items.is_empty() => Shown::Absent,
        Json::Object(map) if map.is_empty() => Shown::Absent,
        Json::Array(_) | Json::Object(_) => Shown::Hidden,
    }
}

/// An enum name in `lang`; one the catalog does not know as its name.
fn enum_value(lang: Lang, name: &str) -> Shown {
    if name.ends_with("_UNSPECIFIED") {
        return Shown::Absent;
    }
    match ENUM_VALUES.iter().find(|(known, _)| *known == name) {
        Some((_, names)) => Shown::Value(lang.of(*names).to_owned()),
        None => Shown::Value(escape(name)),
    }
}

/// Yes or No in `lang`.
fn yes_no(lang: Lang, flag: bool) -> String {
    let row = if flag { ["Yes", "Ja", "Oui", "Sí"] } else { ["No", "Nein", "Non", "No"] };
    lang.of(row).to_owned()
}

/// A proto3 JSON Duration ("5400s") in the largest whole unit: "1 h",
/// "90 min", "45 s"; a fractional one in seconds as written.
fn duration(text: &str) -> String {
    let Some(number) = text.strip_suffix('s') else {
        return escape(text);
    };
    match number.parse::<u64>() {
        Ok(seconds) if seconds >= 3600 && seconds.is_multiple_of(3600) => format!("{} h", seconds / 3600),
        Ok(seconds) if seconds >= 60 && seconds.is_multiple_of(60) => format!("{} min", seconds / 60),
        Ok(seconds) => format!("{seconds} s"),
        Err(_) => format!("{} s", escape(number)),
    }
}

/// Caller text in `lang`'s quotation marks, at most 80 characters (the
/// last one "…" when cut), on one line, escaped.
fn quote(lang: Lang, text: &str) -> String {
    let mut cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        cut.pop();
        cut.push('…');
    }
    let (open, close) = lang.of([("“", "”"), ("„", "“"), ("«\u{a0}", "\u{a0}»"), ("«", "»")]);
    format!("{open}{}{close}", escape(&cut))
}

/// Caller text made inert in Markdown: specials backslash-escaped, line
/// breaks and other control characters turned into spaces (so a value can
/// neither start a block nor end the summary's paragraph).
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.push(' ');
            continue;
        }
        if MARKDOWN_SPECIALS.contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATED: i32 = 2;

    fn change(field: &str, old: Json, new: Json) -> String {
        serde_json::json!([{ "field": field, "old_value": old, "new_value": new }]).to_string()
    }

    fn priority(old: &str, new: &str) -> String {
        change("priority", Json::from(old), Json::from(new))
    }

    #[test]
    fn priority_changes_read_in_each_language() {
        let normal_to_high = priority("PRIORITY_NORMAL", "PRIORITY_HIGH");
        assert_eq!(summary(Lang::En, UPDATED, &normal_to_high), "Priority changed from Normal to High");
        assert_eq!(summary(Lang::De, UPDATED, &normal_to_high), "Priorität geändert von Normal auf Hoch");
        assert_eq!(summary(Lang::Fr, UPDATED, &normal_to_high), "Priorité modifiée de Normale à Haute");
        assert_eq!(summary(Lang::Es, UPDATED, &normal_to_high), "Prioridad cambiada de Normal a Alta");
        let high_to_low = priority("PRIORITY_HIGH", "PRIORITY_LOW");
        assert_eq!(summary(Lang::En, UPDATED, &high_to_low), "Priority changed from High to Low");
        assert_eq!(summary(Lang::De, UPDATED, &high_to_low), "Priorität geändert von Hoch auf Niedrig");
    }

    #[test]
    fn participles_agree_with_the_label() {
        let subject = change("subject", Json::from("Old"), Json::from("New"));
        assert_eq!(summary(Lang::Fr, UPDATED, &subject), "Sujet modifié de «\u{a0}Old\u{a0}» à «\u{a0}New\u{a0}»");
        assert_eq!(summary(Lang::Es, UPDATED, &subject), "Asunto cambiado de «Old» a «New»");
        assert_eq!(summary(Lang::De, UPDATED, &subject), "Betreff geändert von „Old“ auf „New“");
        let status = change("status", Json::from("STATUS_SCHEDULED"), Json::from("STATUS_COMPLETED"));
        assert_eq!(summary(Lang::Fr, UPDATED, &status), "Statut modifié de Planifié à Terminé");
        let details = change("details", Json::Null, serde_json::json!({ "raw": "x" }));
        assert_eq!(summary(Lang::En, UPDATED, &details), "Details changed");
        assert_eq!(summary(Lang::Fr, UPDATED, &details), "Détails modifiés");
        assert_eq!(summary(Lang::Es, UPDATED, &details), "Detalles cambiados");
    }

    #[test]
    fn set_cleared_and_several_fields() {
        let set = change("priority", Json::Null, Json::from("PRIORITY_URGENT"));
        assert_eq!(summary(Lang::En, UPDATED, &set), "Priority set to Urgent");
        assert_eq!(summary(Lang::De, UPDATED, &set), "Priorität auf Dringend gesetzt");
        assert_eq!(summary(Lang::Fr, UPDATED, &set), "Priorité définie sur Urgente");
        let cleared = change("location", Json::from("Berlin"), Json::Null);
        assert_eq!(summary(Lang::En, UPDATED, &cleared), "Location cleared");
        assert_eq!(summary(Lang::Es, UPDATED, &cleared), "Lugar borrado");
        let several = serde_json::json!([
            { "field": "type", "old_value": "call", "new_value": "meeting" },
            { "field": "duration", "old_value": "3600s", "new_value": "5400s" },
            { "field": "is_test", "old_value": true, "new_value": null },
            { "field": "flavour", "old_value": null, "new_value": 3 },
        ]);
        assert_eq!(
            summary(Lang::En, UPDATED, &several.to_string()),
            "Type changed from “call” to “meeting”\n\n\
             Duration changed from 1 h to 90 min\n\n\
             Test activity changed from Yes to No\n\n\
             flavour set to 3"
        );
    }

    #[test]
    fn caller_text_is_escaped_and_cut() {
        let subject = change("subject", Json::Null, Json::from("<script>alert(1)</script> *x* [a](b)\n# h"));
        let text = summary(Lang::En, UPDATED, &subject);
        assert_eq!(text, "Subject set to “\\<script\\>alert(1)\\</script\\> \\*x\\* \\[a\\](b) \\# h”");
        assert!(!text.contains("<script>"), "{text}");
        let long = change("subject", Json::Null, Json::from("a".repeat(100)));
        assert_eq!(summary(Lang::En, UPDATED, &long), format!("Subject set to “{}…”", "a".repeat(79)));
        let exact = change("subject", Json::Null, Json::from("b".repeat(80)));
        assert_eq!(summary(Lang::En, UPDATED, &exact), format!("Subject set to “{}”", "b".repeat(80)));
    }

    #[test]
    fn one_line_kinds() {
        assert_eq!(summary(Lang::En, 1, "[]"), "Activity created");
        assert_eq!(summary(Lang::De, 1, "[]"), "Aktivität erstellt");
        assert_eq!(summary(Lang::Fr, 1, "[]"), "Activité créée");
        assert_eq!(summary(Lang::Es, 1, "[]"), "Actividad creada");
        assert_eq!(summary(Lang::En, 3, "[]"), "Activity deleted");
        assert_eq!(summary(Lang::En, 4, "[]"), "Activity restored");
        assert_eq!(summary(Lang::En, 5, "[]"), "Task completed");
        assert_eq!(summary(Lang::En, 6, "[]"), "Task reopened");
        assert_eq!(summary(Lang::En, 99, "garbage"), "Activity changed");
        assert_eq!(summary(Lang::En, UPDATED, "garbage"), "Activity changed");
    }

    #[test]
    fn participants_are_named() {
        let one = serde_json::json!({ "contact_id": "0190-a" });
        let two = serde_json::json!({ "contact_id": "0190-b", "role": "organizer" });
        let added = change("participants", serde_json::json!([one]), serde_json::json!([one, two]));
        assert_eq!(summary(Lang::En, 7, &added), "Participant 0190-b added as organizer");
        assert_eq!(summary(Lang::De, 7, &added), "Teilnehmer 0190-b als Organisator hinzugefügt");
        let removed = change("participants", serde_json::json!([one, two]), serde_json::json!([two]));
        assert_eq!(summary(Lang::En, 8, &removed), "Participant 0190-a removed (target)");
        assert_eq!(summary(Lang::Es, 8, &removed), "Participante 0190-a eliminado (destinatario)");
        let last = change("participants", serde_json::json!([one]), Json::Null);
        assert_eq!(summary(Lang::Fr, 8, &last), "Participant 0190-a retiré (cible)");
        assert_eq!(summary(Lang::En, 7, "[]"), "Participant added");
    }

    #[test]
    fn languages_fall_back() {
        assert_eq!(Languages::parse("fr-CA").pick(["en", "fr"]), Some("fr"));
        assert_eq!(Languages::parse("pt-BR").pick(["en", "de"]), Some("en"));
        assert_eq!(Languages::parse("pt-BR").pick(["de"]), None);
        assert_eq!(Languages::parse("fr").pick(["en", "fr-CA"]), Some("fr-CA"));
        assert_eq!(Languages::parse("fr-ca").pick(["en", "FR-CA"]), Some("FR-CA"));
        assert_eq!(Languages::parse("").pick(["de", "en"]), Some("en"));
    }

    #[test]
    fn texts_follow_the_header() {
        assert_eq!(Languages::parse("de-AT,fr;q=0.5").texts(), Lang::De);
        assert_eq!(Languages::parse("").texts(), Lang::En);
        assert_eq!(Languages::parse("es-MX").texts(), Lang::Es);
        assert_eq!(Languages::parse("en;q=0.5, fr").texts(), Lang::Fr);
        assert_eq!(Languages::parse("fr;q=0, de").texts(), Lang::De);
        assert_eq!(Languages::parse(";;,,=q,*").texts(), Lang::En);
        assert_eq!(Languages::parse("pt-BR,ja;q=0.9").texts(), Lang::En);
        let long = format!("{},de", "x".repeat(MAX_HEADER_BYTES));
        assert_eq!(Languages::parse(&long).texts(), Lang::En);
        let many = format!("{}de", "pt,".repeat(MAX_TAGS));
        assert_eq!(Languages::parse(&many).texts(), Lang::En);
    }

    #[test]
    fn metadata_carries_the_header() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(Languages::from_metadata(&metadata), Languages::default());
        metadata.insert("accept-language", tonic::metadata::MetadataValue::from_static("es-MX,en;q=0.5"));
        assert_eq!(Languages::from_metadata(&metadata).texts(), Lang::Es);
    }

    #[test]
    fn system_types_are_in_sort_order_with_four_names() {
        let keys: Vec<&str> = SYSTEM_TYPES.iter().map(|t| t.key).collect();
        assert_eq!(keys, ["note", "call", "meeting", "email", "sms", "letter", "comment", "task"]);
        assert!(SYSTEM_TYPES.windows(2).all(|pair| pair[0].sort_order < pair[1].sort_order));
        assert_eq!(SYSTEM_TYPES[1].english(), "Call");
        let meeting = SYSTEM_TYPES[2];
        let german = Languages::parse("de-CH").pick(meeting.names.iter().map(|(tag, _)| *tag));
        assert_eq!(german, Some("de"));
        assert_eq!(meeting.names[1], ("de", "Besprechung"));
    }
}
