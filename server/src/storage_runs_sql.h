// Schema versions 4 and 5 (runs, issue 15 item 1). 4: the reports key becomes
// (job, run, tap, generation) and every report stored before is in run "1"
// (kFirstRun, storage.h). 5: the runs table (job, run, first_report), one row
// per run with a stored report, kept by triggers on reports (so every
// statement that inserts or deletes reports keeps it, DeleteJob of a job or of
// a run included) and read by Store::ListRuns. One migration step per
// backend, each run inside the Open transaction of its store (storage.cc,
// storage_postgres.cc).
#ifndef SIGMA_SERVER_SRC_STORAGE_RUNS_SQL_H_
#define SIGMA_SERVER_SRC_STORAGE_RUNS_SQL_H_

namespace sigma::server {

// SQLite cannot drop a UNIQUE constraint: the reports table is rebuilt with
// the columns of version 3 plus run, ids kept (so the seal order, ORDER BY id,
// is unchanged), and its indexes re-created.
inline constexpr char kSqliteRunsMigration[] =
    "CREATE TABLE reports_v4 ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  job TEXT NOT NULL REFERENCES jobs(name),"
    "  run TEXT NOT NULL DEFAULT '1',"
    "  tap TEXT NOT NULL,"
    "  generation INTEGER NOT NULL,"
    "  m INTEGER NOT NULL,"
    "  n REAL NOT NULL,"
    "  n_a INTEGER NOT NULL,"
    "  backend TEXT NOT NULL,"
    "  track1_lower REAL, track1_upper REAL, track2 REAL, track2_ci_halfwidth REAL,"
    "  track1_drift REAL, track2_drift REAL, divergence REAL, drift_halfwidth REAL,"
    "  baseline_job TEXT, baseline_generation INTEGER,"
    "  failed INTEGER NOT NULL,"
    "  sealed_unix_ms INTEGER NOT NULL,"
    "  report BLOB NOT NULL,"
    "  severity TEXT NOT NULL DEFAULT 'ok',"
    "  compute_seconds REAL NOT NULL DEFAULT 0,"
    "  UNIQUE (job, run, tap, generation));"
    "INSERT INTO reports_v4 (id, job, run, tap, generation, m, n, n_a, backend, track1_lower, track1_upper,"
    " track2, track2_ci_halfwidth, track1_drift, track2_drift, divergence, drift_halfwidth, baseline_job,"
    " baseline_generation, failed, sealed_unix_ms, report, severity, compute_seconds)"
    " SELECT id, job, '1', tap, generation, m, n, n_a, backend, track1_lower, track1_upper,"
    " track2, track2_ci_halfwidth, track1_drift, track2_drift, divergence, drift_halfwidth, baseline_job,"
    " baseline_generation, failed, sealed_unix_ms, report, severity, compute_seconds FROM reports;"
    "DROP TABLE reports;"
    "ALTER TABLE reports_v4 RENAME TO reports;"
    "CREATE INDEX reports_by_job ON reports (job, run, tap, generation);"
    "CREATE INDEX reports_by_severity ON reports (severity, job);";

// PostgreSQL changes the constraint in place (the name PostgreSQL gave the
// version-1 UNIQUE (job, tap, generation)).
inline constexpr char kPostgresRunsMigration[] =
    "ALTER TABLE reports ADD COLUMN run TEXT NOT NULL DEFAULT '1';"
    "ALTER TABLE reports DROP CONSTRAINT reports_job_tap_generation_key;"
    "ALTER TABLE reports ADD CONSTRAINT reports_job_run_tap_generation_key UNIQUE (job, run, tap, generation);"
    "DROP INDEX reports_by_job;"
    "CREATE INDEX reports_by_job ON reports (job, run, tap, generation);";

// Version 5, SQLite: row triggers (the delete trigger probes the reports_by_job index).
inline constexpr char kSqliteRunsTableMigration[] =
    "CREATE TABLE runs (job TEXT NOT NULL, run TEXT NOT NULL, first_report INTEGER NOT NULL,"
    "  PRIMARY KEY (job, run));"
    "INSERT INTO runs (job, run, first_report) SELECT job, run, min(id) FROM reports GROUP BY job, run;"
    "CREATE TRIGGER reports_runs_insert AFTER INSERT ON reports BEGIN"
    "  INSERT OR IGNORE INTO runs (job, run, first_report) VALUES (NEW.job, NEW.run, NEW.id); END;"
    "CREATE TRIGGER reports_runs_delete AFTER DELETE ON reports"
    "  WHEN NOT EXISTS (SELECT 1 FROM reports WHERE job = OLD.job AND run = OLD.run) BEGIN"
    "  DELETE FROM runs WHERE job = OLD.job AND run = OLD.run; END;";

// Version 5, PostgreSQL: statement triggers over the transition tables (one
// runs statement per reports statement, whatever its row count).
inline constexpr char kPostgresRunsTableMigration[] =
    "CREATE TABLE runs (job TEXT NOT NULL, run TEXT NOT NULL, first_report BIGINT NOT NULL,"
    "  PRIMARY KEY (job, run));"
    "INSERT INTO runs (job, run, first_report) SELECT job, run, min(id) FROM reports GROUP BY job, run;"
    "CREATE FUNCTION sigma_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    "  INSERT INTO runs (job, run, first_report) SELECT job, run, min(id) FROM sigma_new GROUP BY job, run"
    "  ON CONFLICT (job, run) DO NOTHING;"
    "  RETURN NULL; END $$;"
    "CREATE TRIGGER reports_runs_insert AFTER INSERT ON reports REFERENCING NEW TABLE AS sigma_new"
    "  FOR EACH STATEMENT EXECUTE PROCEDURE sigma_runs_inserted();"
    "CREATE FUNCTION sigma_runs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    "  DELETE FROM runs r USING (SELECT DISTINCT job, run FROM sigma_old) d"
    "  WHERE r.job = d.job AND r.run = d.run"
    "  AND NOT EXISTS (SELECT 1 FROM reports x WHERE x.job = d.job AND x.run = d.run);"
    "  RETURN NULL; END $$;"
    "CREATE TRIGGER reports_runs_delete AFTER DELETE ON reports REFERENCING OLD TABLE AS sigma_old"
    "  FOR EACH STATEMENT EXECUTE PROCEDURE sigma_runs_deleted();";

}  // namespace sigma::server

#endif  // SIGMA_SERVER_SRC_STORAGE_RUNS_SQL_H_
