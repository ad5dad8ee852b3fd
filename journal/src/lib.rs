//! ringex-journal: segmented mmap journal, snapshot store and recovery (in progress).
