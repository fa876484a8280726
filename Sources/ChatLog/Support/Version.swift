/// The version of chatlog (library and command), and the newest store schema it reads and writes.
public enum ChatLogVersion {
    public static let current = "0.2.0"
    /// The newest schema version (migration number) this build knows.
    public static var schema: Int { Schema.latestVersion }
}
