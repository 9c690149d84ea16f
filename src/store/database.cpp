#include "database.hpp"

#include <kiln/util/error.hpp>

#include <sqlite3.h>

namespace kiln::detail {

Database::Database(const std::filesystem::path& file) : m_file(file)
{
  int rc = sqlite3_open_v2(file.c_str(), &m_db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string message = m_db ? sqlite3_errmsg(m_db) : sqlite3_errstr(rc);
    sqlite3_close(m_db);
    m_db = nullptr;
    throw Error("opening store database '" + file.string() + "': " + message);
  }
  // Concurrent kiln processes wait for each other instead of failing.
  sqlite3_busy_timeout(m_db, 600'000);
  exec("PRAGMA journal_mode = WAL");
  // NORMAL in WAL mode keeps the database consistent on power loss; a lost
  // commit only makes a path invalid again, whose content was synced first.
  exec("PRAGMA synchronous = NORMAL");
  exec("PRAGMA foreign_keys = ON");
}

Database::~Database()
{
  sqlite3_close_v2(m_db);
}

void
Database::exec(std::string_view sql)
{
  char* error = nullptr;
  std::string text(sql);
  if (sqlite3_exec(m_db, text.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    throw Error("store database '" + m_file.string() + "': " + message + " (in: " + text + ")");
  }
}

int64_t
Database::last_insert_id() const
{
  return sqlite3_last_insert_rowid(m_db);
}

void
Database::fail(const std::string& context) const
{
  throw Error("store database '" + m_file.string() + "': " + context + ": " +
              sqlite3_errmsg(m_db));
}

Statement::Statement(Database& db, std::string_view sql) : m_db(db), m_sql(sql)
{
  if (sqlite3_prepare_v2(db.handle(), m_sql.c_str(), -1, &m_stmt, nullptr) != SQLITE_OK) {
    db.fail("preparing '" + m_sql + "'");
  }
}

Statement::~Statement()
{
  sqlite3_finalize(m_stmt);
}

Statement&
Statement::bind(int index, std::string_view value)
{
  if (sqlite3_bind_text(m_stmt, index, value.data(), static_cast<int>(value.size()),
                        SQLITE_TRANSIENT) != SQLITE_OK) {
    m_db.fail("binding a value");
  }
  return *this;
}

Statement&
Statement::bind(int index, int64_t value)
{
  if (sqlite3_bind_int64(m_stmt, index, value) != SQLITE_OK) {
    m_db.fail("binding a value");
  }
  return *this;
}

Statement&
Statement::bind_null(int index)
{
  if (sqlite3_bind_null(m_stmt, index) != SQLITE_OK) {
    m_db.fail("binding a value");
  }
  return *this;
}

Statement&
Statement::bind_optional(int index, const std::optional<std::string>& value)
{
  return value ? bind(index, std::string_view(*value)) : bind_null(index);
}

bool
Statement::step()
{
  int rc = sqlite3_step(m_stmt);
  if (rc == SQLITE_ROW) {
    return true;
  }
  if (rc == SQLITE_DONE) {
    return false;
  }
  m_db.fail("running '" + m_sql + "'");
}

void
Statement::run()
{
  while (step()) {
  }
  reset();
}

void
Statement::reset()
{
  sqlite3_reset(m_stmt);
  sqlite3_clear_bindings(m_stmt);
}

std::string
Statement::column_text(int index) const
{
  auto* text = reinterpret_cast<const char*>(sqlite3_column_text(m_stmt, index));
  return text ? std::string(text, static_cast<size_t>(sqlite3_column_bytes(m_stmt, index)))
              : std::string();
}

std::optional<std::string>
Statement::column_optional_text(int index) const
{
  if (sqlite3_column_type(m_stmt, index) == SQLITE_NULL) {
    return std::nullopt;
  }
  return column_text(index);
}

int64_t
Statement::column_int(int index) const
{
  return sqlite3_column_int64(m_stmt, index);
}

Transaction::Transaction(Database& db) : m_db(db)
{
  m_db.exec("BEGIN IMMEDIATE");
}

Transaction::~Transaction()
{
  if (m_active) {
    try {
      m_db.exec("ROLLBACK");
    } catch (...) {
      // Nothing more can be done in a destructor; SQLite rolls back on close.
    }
  }
}

void
Transaction::commit()
{
  m_db.exec("COMMIT");
  m_active = false;
}

} // namespace kiln::detail
