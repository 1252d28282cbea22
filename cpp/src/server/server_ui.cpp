// The dashboard's files: read once from the configured folder into memory, and served at /ui/
// by name. A request can only name a file that was read, so no path reaches the file system.
#include <filesystem>
#include <fstream>

#include "server_impl.h"

namespace lepton {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxUiBytes = 32 << 20;

const char* ContentType(const std::string& extension) {
  static const std::map<std::string, const char*> kTypes = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".woff2", "font/woff2"},
      {".json", "application/json"},
      {".txt", "text/plain; charset=utf-8"}};
  auto it = kTypes.find(extension);
  return it == kTypes.end() ? nullptr : it->second;
}

}  // namespace

void Server::Impl::LoadUi() {
  if (options_.ui_dir.empty()) return;
  const fs::path dir(options_.ui_dir);
  std::error_code ec;
  if (!fs::is_regular_file(dir / "index.html", ec)) {
    throw InvalidArgument("ui_dir '" + options_.ui_dir +
                          "' holds no index.html: build the dashboard first (scripts/bootstrap)");
  }
  size_t total = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    const char* type = ContentType(entry.path().extension().string());
    if (!type || name.empty() || name[0] == '.') continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) throw StorageError("cannot read " + entry.path().string());
    total += body.size();
    if (total > kMaxUiBytes) {
      throw InvalidArgument("ui_dir '" + options_.ui_dir + "' holds more than " +
                            std::to_string(kMaxUiBytes >> 20) + " MB of files");
    }
    ui_files_[name] = UiFile{type, std::move(body)};
  }
}

Reply Server::Impl::UiRoute(const std::string& method, const std::vector<std::string>& p) const {
  if (ui_files_.empty()) {
    throw HttpError{404, "this server serves no dashboard (start it with ui_dir set)"};
  }
  Method(method, "GET");
  // /ui and /ui/ are the page; its own routes live in the URL's fragment.
  const std::string name = p.size() == 2 ? p[1] : "index.html";
  auto it = ui_files_.find(name);
  if (p.size() > 2 || it == ui_files_.end()) {
    throw HttpError{404, "the dashboard has no file '" + (p.size() > 1 ? p.back() : "") + "'"};
  }
  Reply r;
  r.body = it->second.body;
  r.headers["Content-Type"] = it->second.content_type;
  // The page loads only its own files and talks only to this server; nothing may frame it.
  r.headers["Content-Security-Policy"] =
      "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
      "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
      "frame-ancestors 'none'";
  r.headers["X-Content-Type-Options"] = "nosniff";
  r.headers["X-Frame-Options"] = "DENY";
  r.headers["Referrer-Policy"] = "no-referrer";
  r.headers["Cache-Control"] = "no-cache";
  return r;
}

}  // namespace lepton
