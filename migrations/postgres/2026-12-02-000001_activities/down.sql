DROP TABLE activity_revisions;
DROP TABLE activities;
DROP TABLE activity_types;
