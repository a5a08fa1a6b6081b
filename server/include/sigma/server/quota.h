// Per-token quotas (issue 14 item 7; tokens file keys max_jobs,
// max_open_snapshots, max_memory_bytes; docs/reliability.md "Authorisation"):
// one tenant cannot fill the daemon-wide --max-jobs, --max-open-snapshots or
// --max-memory-bytes for the others. A token without quotas (and every
// request when auth is off) is limited by those flags only.
//
// What is counted against a token:
//   jobs            jobs created (by OpenSnapshot or ConfigureJob) by its
//                   requests since the daemon started and not deleted since
//                   (jobs restored from the store at start count for no token);
//   open snapshots  snapshots its OpenSnapshot opened, until they leave the table;
//   memory          the bytes those snapshots hold (a MemoryBudget chained
//                   to the daemon's: a charge must fit both).
// Refusals: RESOURCE_EXHAUSTED naming the token's label and quota (never the
// token), reasons quota_jobs, quota_open_snapshots, quota_memory.
//
// Thread-safety: TenantBook is not thread-safe (Engine::mu_ guards it); the
// budgets it hands out are (MemoryBudget). Memory: one entry per token with
// a quota (a fixed set: the tokens file), never erased; the budgets' addresses
// are stable and outlive every snapshot (the Engine owns the book).
#ifndef SIGMA_SERVER_QUOTA_H_
#define SIGMA_SERVER_QUOTA_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "sigma/server/snapshot.h"

namespace sigma::server {

// Who a request is charged to, and that token's quotas (0: none).
struct Tenant {
  std::string key;    // unique per token, reveals nothing of it; "" when auth is off
  std::string label;  // "token 'NAME'", for messages
  int64_t max_jobs = 0;
  int64_t max_open_snapshots = 0;
  int64_t max_memory_bytes = 0;
  bool limited() const { return !key.empty() && (max_jobs > 0 || max_open_snapshots > 0 || max_memory_bytes > 0); }
};

class TenantBook {
 public:
  // `global`: the daemon's --max-memory-bytes budget, parent of every token's.
  explicit TenantBook(MemoryBudget* global) : global_(global) {}

  // OK when `t` may create one more job / open one more snapshot; else
  // RESOURCE_EXHAUSTED (quota_jobs / quota_open_snapshots).
  absl::Status AdmitJob(const Tenant& t) const;
  absl::Status AdmitOpen(const Tenant& t) const;
  void JobCreated(const Tenant& t);
  void Opened(const Tenant& t);
  // A job created by tenant `key` was deleted (DeleteJob, retention): its
  // slot in the max_jobs quota is free again.
  void JobDeleted(const std::string& key);
  // A snapshot opened by tenant `key` left the table.
  void Closed(const std::string& key);
  // The budget `t`'s snapshots charge: its quota's (chained to the global
  // one), or the global one when it has no memory quota.
  MemoryBudget* Budget(const Tenant& t);

  int64_t jobs(const std::string& key) const;
  int64_t open_snapshots(const std::string& key) const;

 private:
  struct Held {
    int64_t jobs = 0;
    int64_t open_snapshots = 0;
    std::unique_ptr<MemoryBudget> memory;  // null: no memory quota
  };
  MemoryBudget* const global_;
  std::map<std::string, Held> held_;  // tenants with a quota only
};

}  // namespace sigma::server

#endif  // SIGMA_SERVER_QUOTA_H_
