// Ctrl-C while tokenctl waits (login): SIGINT and SIGTERM only set a flag and
// write a byte to a pipe, so a poll() that includes fd() wakes up whenever the
// signal lands (a flag alone could be missed between the check and the
// poll). The handlers are installed without SA_RESTART, so blocking calls
// return EINTR; callers retry and check interrupted().
#pragma once

namespace tokend::ctl {

class InterruptWatch {
 public:
  // Installs the handlers; the previous ones come back on destruction. One
  // watch at a time.
  InterruptWatch();
  ~InterruptWatch();
  InterruptWatch(const InterruptWatch&) = delete;
  InterruptWatch& operator=(const InterruptWatch&) = delete;

  [[nodiscard]] bool interrupted() const noexcept;
  // Readable once a signal arrived; -1 when the pipe could not be made (then
  // only EINTR wakes a poll()).
  [[nodiscard]] int fd() const noexcept;
};

}  // namespace tokend::ctl
