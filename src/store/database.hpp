// A thin RAII layer over SQLite, private to the store module.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

struct sqlite3;
struct sqlite3_stmt;

namespace kiln::detail {

class Database;

class Statement
{
public:
  Statement(Database& db, std::string_view sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, int64_t value);
  Statement& bind_null(int index);
  Statement& bind_optional(int index, const std::optional<std::string>& value);

  // Advance; true while a row is available.
  bool step();
  // Run to completion (for statements without results).
  void run();
  void reset();

  std::string column_text(int index) const;
  std::optional<std::string> column_optional_text(int index) const;
  int64_t column_int(int index) const;

private:
  Database& m_db;
  sqlite3_stmt* m_stmt = nullptr;
  std::string m_sql;
};

class Database
{
public:
  explicit Database(const std::filesystem::path& file);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  void exec(std::string_view sql);
  int64_t last_insert_id() const;
  [[noreturn]] void fail(const std::string& context) const;

  sqlite3*
  handle()
  {
    return m_db;
  }

private:
  sqlite3* m_db = nullptr;
  std::filesystem::path m_file;
};

// BEGIN IMMEDIATE … COMMIT, rolled back if not committed.
class Transaction
{
public:
  explicit Transaction(Database& db);
  ~Transaction();
  void commit();

private:
  Database& m_db;
  bool m_active = true;
};

} // namespace kiln::detail
