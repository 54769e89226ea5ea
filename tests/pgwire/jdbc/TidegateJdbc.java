// Driven by tests/pgwire/test_jdbc.py: the PostgreSQL JDBC driver (what Tableau, DBeaver and
// Metabase use) against the endpoint. Prints one "name=value" line per check.
import java.sql.*;
import java.util.*;

public class TidegateJdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[1] + "?sslmode=require";
        Properties props = new Properties();
        props.setProperty("user", "bi");
        props.setProperty("password", args[2]);
        props.setProperty("ApplicationName", "jdbc-test");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            } catch (SQLException e) {
                tables.add("error:" + e.getSQLState());
            }
            Collections.sort(tables);
            System.out.println("tables=" + String.join(",", tables));
            List<String> columns = new ArrayList<>();  // what Metabase's and DBeaver's sync read
            try (ResultSet rs = conn.getMetaData().getColumns(null, "public", "sales", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            } catch (SQLException e) {
                columns.add("error:" + e.getSQLState() + ":" + e.getMessage());
            }
            System.out.println("columns=" + String.join(",", columns));
            List<String> keys = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getPrimaryKeys(null, "public", "sales")) {
                while (rs.next()) keys.add(rs.getString("COLUMN_NAME"));
            } catch (SQLException e) {
                keys.add("error:" + e.getSQLState() + ":" + e.getMessage());
            }
            System.out.println("keys=" + String.join(",", keys));
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*), sum(amount) FROM sales WHERE region = ?")) {
                StringBuilder out = new StringBuilder();
                for (int i = 0; i < 7; i++) {  // past prepareThreshold (5): server-prepared, binary results
                    ps.setString(1, i % 2 == 0 ? "US" : "EU");
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        out.append(rs.getLong(1)).append(":").append(rs.getLong(2)).append(" ");
                    }
                }
                System.out.println("prepared=" + out.toString().trim());
            }
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(1000);  // a portal run 1,000 rows at a time
                long rows = 0, sum = 0;
                try (ResultSet rs = st.executeQuery("SELECT n FROM big")) {
                    while (rs.next()) { rows++; sum += rs.getLong(1); }
                }
                System.out.println("fetched=" + rows + ":" + sum);
            }
            conn.commit();
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO sales VALUES ('US', 'z', 1)");
                System.out.println("write=accepted");
            } catch (SQLException e) {
                System.out.println("write=" + e.getSQLState());
            }
        }
    }
}
