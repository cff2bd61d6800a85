#!/usr/bin/env python3
"""Writes the ceiling scripts of the load benchmark (scripts/load): for each
scenario of examples/load.rs, the statements that call must make at the
least (the row; its Change; its revision for activities and tasks; the
request id when one is given), in one transaction where the service uses
one, for PostgreSQL (run by pgbench -M prepared) and for SQLite (run by
`load --sqlite-ceiling`, which reads the same format).

The values are those the load generator sends and the service stores
(text, JSON, rendered HTML, diffs and encoded resources of the same size),
so the database does the same work as under the service.

    scripts/load_sql.py DIR        # DIR/postgres/<scenario>.sql, DIR/sqlite/<scenario>.sql

Variables: :tenant (the seeded tenant), :seed (resources seeded of each
kind), :now (a time in microseconds); `\\set` draws numbers, `\\gset` keeps
a row's columns as variables (pgbench's syntax).
"""

import json
import os
import sys

# ---- the values the load generator sends (examples/load.rs) ----------------

NOTES_RAW = ("Met at **the conference** in London (17); follow up about the renewal.\n\n"
             "- budget approved for next year\n- call back after the board meeting\n- send the _pricing_ sheet")
NOTES_HTML = ("<p>Met at <strong>the conference</strong> in London (17); follow up about the renewal.</p>\n"
              "<ul>\n<li>budget approved for next year</li>\n<li>call back after the board meeting</li>\n"
              "<li>send the <em>pricing</em> sheet</li>\n</ul>\n")
EMAILS = [{"label": "work", "address": "ada.17@example.com", "primary": True}]
PHONES = [{"label": "work", "number": "+44 20 7946 0958"}]
CUSTOM = {"vip": False, "tier": "gold", "score": 17.0}
DETAILS_RAW = ("Agenda for call 17:\n\n1. **Renewal** terms and the new _pricing_\n2. Open support tickets\n"
               "3. Roadmap for the analytics module\n\n"
               "Notes: the customer asked for a demo of [the new reports](https://example.com/reports).")
DETAILS_HTML = ("<p>Agenda for call 17:</p>\n<ol>\n<li><strong>Renewal</strong> terms and the new <em>pricing</em></li>\n"
                "<li>Open support tickets</li>\n<li>Roadmap for the analytics module</li>\n</ol>\n"
                "<p>Notes: the customer asked for a demo of <a href=\"https://example.com/reports\" "
                "rel=\"noopener noreferrer\">the new reports</a>.</p>\n")
PARTICIPANTS = [{"role": "target", "contact_id": "00000001-0000-7000-8000-000000000011"},
                {"role": "attendee", "contact_id": "00000001-0000-7000-8000-000000000078"}]
RELATED = [{"id": "D-17", "type": "deal"}]
TASK_RAW = "Prepare the **offer** with the new pricing and send it before the end of the quarter."
TASK_HTML = ("<p>Prepare the <strong>offer</strong> with the new pricing and send it before the end of the "
             "quarter.</p>\n")


def rich(raw, html):
    return {"raw": raw, "html": html, "format": "TEXT_FORMAT_MARKDOWN"}


def diff(*fields):
    return [{"field": f, "new_value": new, "old_value": old} for f, new, old in fields]


CONTACT_CREATED = diff(("display_name", "Ada Lovelace 17", None), ("given_name", "Ada", None),
                       ("family_name", "Lovelace 17", None), ("organization", "ACME", None),
                       ("job_title", "Head of Analytical Engines", None), ("emails", EMAILS, None),
                       ("phones", PHONES, None), ("notes", rich(NOTES_RAW, NOTES_HTML), None),
                       ("custom_fields", CUSTOM, None))
CONTACT_UPDATED = diff(("job_title", "Engineer 7-1", "Head of Analytical Engines"),
                       ("notes", rich(NOTES_RAW, NOTES_HTML), rich(NOTES_RAW, NOTES_HTML)))
ACTIVITY_CREATED = diff(("type", "call", None), ("subject", "Quarterly review with the customer, round 17", None),
                        ("details", rich(DETAILS_RAW, DETAILS_HTML), None), ("status", "STATUS_SCHEDULED", None),
                        ("priority", "PRIORITY_NORMAL", None), ("occur_time", "2026-12-06T20:22:46Z", None),
                        ("duration", "1800s", None), ("location", "Meeting room 4", None),
                        ("medium", "MEDIUM_PHONE", None), ("participants", PARTICIPANTS, None),
                        ("related", RELATED, None), ("custom_fields", CUSTOM, None))
ACTIVITY_UPDATED = diff(("subject", "Quarterly review, moved 7-5", "Quarterly review with the customer, round 189"),
                        ("location", "Meeting room 5", "Meeting room 4"))
PARTICIPANT_ADDED = diff(("participants",
                          PARTICIPANTS + [{"role": "attendee", "contact_id": "00000001-0000-7000-8000-000000000008"}],
                          PARTICIPANTS))
TASK_CREATED = diff(("title", "Send the renewal offer, number 17", None),
                    ("description", rich(TASK_RAW, TASK_HTML), None), ("deadline", "2026-12-07T20:22:46Z", None),
                    ("responsible_user_id", "load", None), ("status", "STATUS_SCHEDULED", None),
                    ("priority", "PRIORITY_HIGH", None), ("time_zone", "UTC", None))
TASK_UPDATED = diff(("title", "Send the renewal offer, take 7-58", "Send the renewal offer, number 60"),
                    ("priority", "PRIORITY_URGENT", "PRIORITY_HIGH"))
TASK_COMPLETED = diff(("status", "STATUS_COMPLETED", "STATUS_SCHEDULED"),
                      ("completed_time", "2026-12-06T20:22:49.035084Z", None), ("completed_by", "load", None))

# Encoded sizes of the resources the service keeps in each Change (measured).
CONTACT_BYTES, ACTIVITY_BYTES, PARTICIPANT_BYTES, TASK_BYTES = 680, 900, 980, 380

CONTACT_COLUMNS = ("tenant_id, id, display_name, given_name, family_name, organization, job_title, emails, phones, "
                   "external_id, notes_format, notes_raw, notes_html, custom_fields, revision, create_time, "
                   "update_time, delete_time, purge_time, created_by, updated_by")
ACTIVITY_COLUMNS = ("tenant_id, id, activity_type, subject, details_format, details_raw, details_html, status, "
                    "priority, occur_time, due_time, duration, location, phone_number, medium, parent_id, "
                    "source_contact_id, assignee_user_id, assignee_group, participants, related, custom_fields, "
                    "is_test, is_auto, result, revision, create_time, update_time, delete_time, purge_time, "
                    "created_by, updated_by, time_zone, recurrence_start")
CHANGE_COLUMNS = "tenant_id, sequence, resource_type, resource_id, kind, revision, actor, request_id, time, diff, resource"
REVISION_COLUMNS = "tenant_id, activity_id, revision, kind, actor, time, diff, comment_format, comment_raw, comment_html"
REQUEST_HASH = "10645820324f86d939be74a80bc9a9819a9847f6a4cb7cb365c1bd9b1d6b9e29"


def q(text):
    return "'" + text.replace("'", "''") + "'"


class Dialect:
    """What differs between PostgreSQL and SQLite in these scripts."""

    def __init__(self, pg):
        self.pg = pg
        self.begin = "BEGIN;" if pg else "BEGIN IMMEDIATE;"

    def json(self, value):
        return q(json.dumps(value)) + ("::jsonb" if self.pg else "")

    def blob(self, size):
        return f"decode(repeat('a5', {size}), 'hex')" if self.pg else f"zeroblob({size})"

    def seeded(self, kind, var=":n"):
        """The id of seeded resource number `var` (examples/load.rs, seeded_id)."""
        if self.pg:
            return f"'0000000{kind}-0000-7000-8000-' || lpad(to_hex({var}::bigint), 12, '0')"
        return f"'0000000{kind}-0000-7000-8000-' || printf('%012x', {var})"

    def new_id(self):
        return "gen_random_uuid()::text" if self.pg else "lower(hex(randomblob(16)))"

    def boolean(self, value):
        return ("true" if value else "false") if self.pg else ("1" if value else "0")

    def lock(self):
        # SQLite has one writer (BEGIN IMMEDIATE holds it): no row locks.
        return " FOR UPDATE" if self.pg else ""

    def changes(self, rtype, kind, resource_id, revision, change_diff, size, rows=None):
        """The Change rows: numbered from the transaction id on PostgreSQL,
        from the tenant's counter on SQLite (src/store/change.rs)."""
        count = rows or 1
        values = (f"{rtype}, {resource_id}, {kind}, {revision}, 'load', NULL, :now, "
                  f"{self.json(change_diff)}, {self.blob(size)}")
        if self.pg:
            sequence = "pg_current_xact_id()::text::bigint * 65536 + " + ("i" if rows else "0")
            head = ""
        else:
            head = ("INSERT INTO change_sequences (tenant_id, last_sequence, purged_through) "
                    f"VALUES (:tenant, {count}, 0)\n  ON CONFLICT (tenant_id) DO UPDATE SET "
                    "last_sequence = last_sequence + excluded.last_sequence RETURNING last_sequence \\gset\n")
            sequence = ":last_sequence" + (" - i" if rows else "")
        if rows:
            return (head + f"INSERT INTO changes ({CHANGE_COLUMNS})\n  SELECT :tenant, {sequence}, {values}\n"
                    f"  FROM {self.series(rows)};")
        return head + f"INSERT INTO changes ({CHANGE_COLUMNS})\n  VALUES (:tenant, {sequence}, {values});"

    def series(self, rows):
        if self.pg:
            return f"generate_series(0, {rows - 1}) AS i"
        numbers = ", ".join(f"({i})" for i in range(rows))
        return f"(SELECT column1 AS i FROM (VALUES {numbers}))"

    def revision(self, kind, activity_id, revision, revision_diff, rows=None):
        values = f"{activity_id}, {revision}, {kind}, 'load', :now, {self.json(revision_diff)}, 0, '', ''"
        if rows:
            return (f"INSERT INTO activity_revisions ({REVISION_COLUMNS})\n  SELECT :tenant, {values}\n"
                    f"  FROM {self.series(rows)};")
        return f"INSERT INTO activity_revisions ({REVISION_COLUMNS})\n  VALUES (:tenant, {values});"

    def request_id(self, operation):
        return ("INSERT INTO request_ids (tenant_id, request_id, operation, request_hash, resource_id, create_time)\n"
                f"  VALUES (:tenant, {self.new_id()}, '{operation}', '{REQUEST_HASH}', :id, :now)\n"
                "  ON CONFLICT DO NOTHING RETURNING resource_id;")

    def contact(self, contact_id):
        return (f":tenant, {contact_id}, 'Ada Lovelace 17', 'Ada', 'Lovelace 17', 'ACME', "
                f"'Head of Analytical Engines', {self.json(EMAILS)}, {self.json(PHONES)}, NULL, 2, {q(NOTES_RAW)}, "
                f"{q(NOTES_HTML)}, {self.json(CUSTOM)}, 1, :now, :now, NULL, NULL, 'load', 'load'")

    def activity(self, activity_id):
        false = self.boolean(False)
        return (f":tenant, {activity_id}, 'call', 'Quarterly review with the customer, round 17', 2, "
                f"{q(DETAILS_RAW)}, {q(DETAILS_HTML)}, 1, 2, :now, NULL, 1800000000000, 'Meeting room 4', '', 2, "
                f"NULL, NULL, '', '', {self.json(PARTICIPANTS)}, {self.json(RELATED)}, {self.json(CUSTOM)}, "
                f"{false}, {false}, '', 1, :now, :now, NULL, NULL, 'load', 'load', '', NULL")

    def task(self, task_id):
        false = self.boolean(False)
        return (f":tenant, {task_id}, 'task', 'Send the renewal offer, number 17', 2, {q(TASK_RAW)}, "
                f"{q(TASK_HTML)}, 1, 3, :now + 86400000000, :now + 86400000000, NULL, '', '', 0, NULL, NULL, "
                f"'load', '', '[]', '[]', '{{}}', {false}, {false}, '', 1, :now, :now, NULL, NULL, 'load', 'load', "
                "'UTC', :now + 86400000000")

    def add_participant(self):
        contact = self.seeded(1, ":c")
        if self.pg:
            return (f"participants || jsonb_build_array(jsonb_build_object('contact_id', {contact}, "
                    "'role', 'attendee'))")
        return f"json_insert(participants, '$[#]', json_object('contact_id', {contact}, 'role', 'attendee'))"

    def of_contact(self):
        contact = self.seeded(1)
        if self.pg:
            return f"participants @> jsonb_build_array(jsonb_build_object('contact_id', {contact}))"
        # SQLite answers it from its lookup table (src/store/activity.rs).
        return ("id IN (SELECT activity_id FROM activity_elements WHERE tenant_id = :tenant "
                f"AND path = 'participants.contact_id' AND value = {contact})")


def scripts(d):
    """(scenario, what it stands for, its statements) of every scenario."""
    read = "\\set n random(0, :seed - 1)\n"
    contact_id, activity_id, task_id = d.seeded(1), d.seeded(2), d.seeded(3)
    batch_id = "'batch-' || :r || '-' || i"

    def create(columns, values, rtype, created, size, journal, request=None):
        text = (f"{d.begin}\nINSERT INTO {'contacts' if rtype == 1 else 'activities'} ({columns})\n"
                f"  VALUES ({values}) RETURNING id \\gset\n")
        if journal:
            text += d.revision(1, ":id", 1, created) + "\n"
        text += d.changes(rtype, 1, ":id", 1, created, size) + "\n"
        if request:
            text += d.request_id(request) + "\n"
        return text + "COMMIT;\n"

    def modify(table, key, assignments, rtype, kind, revision_kind, changed, size, draw=read):
        text = (f"{draw}{d.begin}\nSELECT * FROM {table} WHERE tenant_id = :tenant AND id = {key}{d.lock()};\n"
                f"UPDATE {table} SET {assignments},\n    revision = revision + 1, update_time = :now, "
                f"updated_by = 'load'\n  WHERE tenant_id = :tenant AND id = {key} RETURNING revision \\gset\n")
        if revision_kind:
            text += d.revision(revision_kind, key, ":revision", changed) + "\n"
        return text + d.changes(rtype, kind, key, ":revision", changed, size) + "\nCOMMIT;\n"

    def batch(table, columns, values, rtype, created, size, journal):
        text = (f"\\set r random(1, 1000000000000000)\n{d.begin}\nINSERT INTO {table} ({columns})\n"
                f"  SELECT {values}\n  FROM {d.series(10)};\n")
        if journal:
            text += d.revision(1, batch_id, 1, created, rows=10) + "\n"
        return text + d.changes(rtype, 1, batch_id, 1, created, size, rows=10) + "\nCOMMIT;\n"

    page = "ORDER BY {} LIMIT 51;\n"
    live = "WHERE tenant_id = :tenant AND delete_time IS NULL"
    return [
        ("contact.get", "GetContact: one row by key",
         f"{read}SELECT * FROM contacts WHERE tenant_id = :tenant AND id = {contact_id};\n"),
        ("contact.create", "CreateContact: the row and its Change",
         create(CONTACT_COLUMNS, d.contact(d.new_id()), 1, CONTACT_CREATED, CONTACT_BYTES, False)),
        ("contact.create_request_id", "CreateContact with a request_id: the row, its Change, the request id",
         create(CONTACT_COLUMNS, d.contact(d.new_id()), 1, CONTACT_CREATED, CONTACT_BYTES, False, "CreateContact")),
        ("contact.update", "UpdateContact: the row read under lock and written, its Change",
         modify("contacts", contact_id, f"job_title = 'Engineer 7-1', notes_raw = {q(NOTES_RAW)}, "
                f"notes_html = {q(NOTES_HTML)}", 1, 2, None, CONTACT_UPDATED, CONTACT_BYTES)),
        ("contact.list", "ListContacts: a first page of 50 (and one row more: is there a next page?)",
         f"SELECT * FROM contacts {live}\n  " + page.format("display_name, id")),
        ("contact.list_filter", "ListContacts with a filter: a first page of 50 of one organization",
         f"SELECT * FROM contacts {live} AND organization = 'ACME'\n  " + page.format("display_name, id")),
        ("contact.batch_create", "BatchCreateContacts of 10: ten rows and ten Changes, a statement each",
         batch("contacts", CONTACT_COLUMNS, d.contact(batch_id), 1, CONTACT_CREATED, CONTACT_BYTES, False)),
        ("activity.get", "GetActivity: one row by key",
         f"{read}SELECT * FROM activities WHERE tenant_id = :tenant AND id = {activity_id};\n"),
        ("activity.create", "CreateActivity: the row, its revision and its Change",
         create(ACTIVITY_COLUMNS, d.activity(d.new_id()), 21, ACTIVITY_CREATED, ACTIVITY_BYTES, True)),
        ("activity.create_request_id", "CreateActivity with a request_id: the row, its revision, its Change, the request id",
         create(ACTIVITY_COLUMNS, d.activity(d.new_id()), 21, ACTIVITY_CREATED, ACTIVITY_BYTES, True,
                "CreateActivity")),
        ("activity.update", "UpdateActivity: the row read under lock and written, its revision and its Change",
         modify("activities", activity_id, "subject = 'Quarterly review, moved 7-5', location = 'Meeting room 5'",
                21, 2, 2, ACTIVITY_UPDATED, ACTIVITY_BYTES)),
        ("activity.list", "ListActivities: a first page of 50, newest first",
         f"SELECT * FROM activities {live}\n  " + page.format("occur_time DESC, id DESC")),
        ("activity.list_filter", "ListActivities of one contact: a first page of 50",
         f"\\set n random(0, 99)\nSELECT * FROM activities {live} AND {d.of_contact()}\n  "
         + page.format("occur_time DESC, id DESC")),
        ("activity.batch_create", "BatchCreateActivities of 10: ten rows, revisions and Changes, a statement each",
         batch("activities", ACTIVITY_COLUMNS, d.activity(batch_id), 21, ACTIVITY_CREATED, ACTIVITY_BYTES, True)),
        ("activity.add_participant", "AddParticipant: the row read under lock and written, its revision and its Change",
         modify("activities", activity_id, f"participants = {d.add_participant()}", 21, 2, 7, PARTICIPANT_ADDED,
                PARTICIPANT_BYTES, draw=read + "\\set c random(0, :seed - 1)\n")),
        ("task.get", "GetTask: one row by key",
         f"{read}SELECT * FROM activities WHERE tenant_id = :tenant AND id = {task_id} AND activity_type = 'task';\n"),
        ("task.create", "CreateTask: the row, its revision and its Change",
         create(ACTIVITY_COLUMNS, d.task(d.new_id()), 23, TASK_CREATED, TASK_BYTES, True)),
        ("task.update", "UpdateTask: the row read under lock and written, its revision and its Change",
         modify("activities", task_id, "subject = 'Send the renewal offer, take 7-58', priority = 4", 23, 2, 2,
                TASK_UPDATED, TASK_BYTES)),
        ("task.list", "ListTasks: a first page of 50 by deadline",
         f"SELECT * FROM activities {live} AND activity_type = 'task'\n  "
         + page.format("COALESCE(due_time, 9223372036854775807), id")),
        ("task.list_filter", "ListTasks with a filter: a first page of 50 of one priority by deadline",
         f"SELECT * FROM activities {live} AND activity_type = 'task' AND priority = 3\n  "
         + page.format("COALESCE(due_time, 9223372036854775807), id")),
        ("task.complete", "CompleteTask: the row read under lock and written, its revision and its Change",
         modify("activities", task_id, "status = 3, completed_time = :now, completed_by = 'load', reminder_at = NULL",
                23, 5, 5, TASK_COMPLETED, TASK_BYTES)),
    ]


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    for name, pg in (("postgres", True), ("sqlite", False)):
        folder = os.path.join(sys.argv[1], name)
        os.makedirs(folder, exist_ok=True)
        for scenario, what, text in scripts(Dialect(pg)):
            with open(os.path.join(folder, scenario + ".sql"), "w") as out:
                out.write(f"-- {what} (scripts/load_sql.py)\n{text}")


if __name__ == "__main__":
    main()
