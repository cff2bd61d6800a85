DROP TABLE activity_revisions;
DROP TABLE activity_elements;
DROP TABLE activities;
DROP TABLE activity_types;
