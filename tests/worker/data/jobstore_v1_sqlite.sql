-- The job store schema as neuroseg 0.1.0 created it (hand-written version table, version 1),
-- kept to test the upgrade of existing databases. Never edit.

CREATE TABLE events (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	job_id VARCHAR(32), 
	kind VARCHAR(32) NOT NULL, 
	message TEXT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_events_at ON events (at);

CREATE INDEX ix_events_job_id ON events (job_id);

CREATE INDEX ix_events_study_instance_uid ON events (study_instance_uid);

CREATE TABLE schema_version (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE studies (
	study_instance_uid VARCHAR(64) NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	patient_name VARCHAR(330) NOT NULL, 
	accession_number VARCHAR(64) NOT NULL, 
	study_description VARCHAR(256) NOT NULL, 
	first_seen_at DATETIME NOT NULL, 
	last_seen_at DATETIME NOT NULL, 
	PRIMARY KEY (study_instance_uid)
);

CREATE TABLE jobs (
	id VARCHAR(32) NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	dedup_key VARCHAR(128), 
	fingerprint VARCHAR(32) NOT NULL, 
	manifest JSON NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	stage VARCHAR(16) NOT NULL, 
	percent FLOAT NOT NULL, 
	message TEXT NOT NULL, 
	error TEXT NOT NULL, 
	attempts INTEGER NOT NULL, 
	worker VARCHAR(128) NOT NULL, 
	device VARCHAR(32) NOT NULL, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	sequences_used JSON NOT NULL, 
	volumes_ml JSON NOT NULL, 
	resume_stage VARCHAR(16) NOT NULL, 
	cancel_requested INTEGER NOT NULL, 
	replaces_job_id VARCHAR(32), 
	reason VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	published_at DATETIME, 
	started_at DATETIME, 
	finished_at DATETIME, 
	heartbeat_at DATETIME, 
	retry_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(study_instance_uid) REFERENCES studies (study_instance_uid), 
	UNIQUE (dedup_key)
);

CREATE INDEX ix_jobs_created_at ON jobs (created_at);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE INDEX ix_jobs_study_instance_uid ON jobs (study_instance_uid);

CREATE TABLE deliveries (
	id INTEGER NOT NULL, 
	job_id VARCHAR(32) NOT NULL, 
	destination VARCHAR(128) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	sent INTEGER NOT NULL, 
	failed INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	last_attempt_at DATETIME, 
	delivered_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_deliveries_job_id ON deliveries (job_id);

CREATE TABLE outputs (
	id INTEGER NOT NULL, 
	job_id VARCHAR(32) NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	series_instance_uid VARCHAR(64) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_outputs_job_id ON outputs (job_id);

CREATE TABLE series (
	id INTEGER NOT NULL, 
	job_id VARCHAR(32) NOT NULL, 
	series_instance_uid VARCHAR(64) NOT NULL, 
	folder TEXT NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	classified_role VARCHAR(16) NOT NULL, 
	confidence FLOAT NOT NULL, 
	reasons JSON NOT NULL, 
	modality VARCHAR(16) NOT NULL, 
	series_description VARCHAR(256) NOT NULL, 
	series_number INTEGER, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	instance_count INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_series_job_id ON series (job_id);

CREATE TABLE stages (
	id INTEGER NOT NULL, 
	job_id VARCHAR(32) NOT NULL, 
	name VARCHAR(16) NOT NULL, 
	attempt INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	duration_s FLOAT, 
	outcome VARCHAR(16) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_stages_job_id ON stages (job_id);

INSERT INTO schema_version (id, version) VALUES (1, 1);
