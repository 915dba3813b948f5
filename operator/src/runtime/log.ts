// The operator's log: one line per message, with a level, filtered by --log-level (SWITCHYARD_LOG_LEVEL, the
// chart's operator.logLevel). debug: every reconcile; info: start-up, leadership, shutdown; warn: failures the
// operator retries (a watch, a heat query, an event); error: a reconcile that failed.

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export function isLogLevel(v: string): v is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(v);
}

/**
 * A line on stdout (debug, info) or stderr (warn, error): `<RFC 3339 time> <level> <message>`. One line whatever the
 * message holds (an API server's plain-text error body, a stack): its line breaks are written as `\n`, so that a log
 * collector does not split one message into lines without a time or level.
 */
export function writeLine(level: LogLevel, message: string): void {
  const line = `${new Date().toISOString()} ${level} ${oneLine(message)}`;
  if (level === "warn" || level === "error") console.error(line);
  else console.log(line);
}

export function oneLine(message: string): string {
  return message.replace(/\r?\n/g, "\\n");
}

/** A logger that hands `write` the messages at `level` and above, and drops the others. */
export function createLogger(level: LogLevel, write: (level: LogLevel, message: string) => void = writeLine): Logger {
  const min = LOG_LEVELS.indexOf(level);
  const at = (l: LogLevel) => (LOG_LEVELS.indexOf(l) >= min ? (m: string) => write(l, m) : () => {});
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** Drops everything (tests, and components built without a logger). */
export const silentLogger: Logger = createLogger("error", () => {});
