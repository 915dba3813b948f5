// Preloaded (node --import) into the workers and routers `npm start` spawns. When the launcher goes without stopping
// them (SIGKILL, a crash, the OOM killer), the IPC channel it opened to each child closes; the child then stops as
// on SIGTERM, instead of serving on, holding its ports and memory (gigabytes at full size), with no one to stop it.

process.once("disconnect", () => process.kill(process.pid, "SIGTERM"));
